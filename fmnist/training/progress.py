"""The training progress bar, counting epochs from 1 as Keras and the study do."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf


class EpochProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with the epoch shown as `Epoch 1/150` instead of `Epoch 0`."""

    def on_train_epoch_start(self, trainer, *args) -> None:
        # Lightning's own hook, with the description set once: its "Epoch 0" would be drawn first.
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset()
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        self.train_progress_bar.initial = 0
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}{total}")
