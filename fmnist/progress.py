"""The training progress bar, counting epochs from 1 as Keras and the study do."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar


class EpochProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with the epoch shown as `Epoch 1/150` instead of `Epoch 0`."""

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}{total}")
