"""The training progress bar: epochs counted from 1 as Keras and the study do, the time left for the
whole run, and the epoch's training loss and accuracy so far."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

from fmnist.training.console import RunConsole, duration


class EpochProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with `Epoch 1/150` instead of `Epoch 0`, the run's ETA and running figures."""

    RUNNING_EVERY = 1.0  # seconds between readings of the running loss and accuracy (each is a host sync)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._read_at = 0.0
        self._running: dict[str, str] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._read_at = 0.0

    def on_train_epoch_start(self, trainer, *args) -> None:
        # Lightning's own hook, with the description set once: its "Epoch 0" would be drawn first.
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset()
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        self.train_progress_bar.initial = 0
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}{total}")
        self._running = {}

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        if trainer.training and not trainer.sanity_checking:
            now = time.perf_counter()
            if now - self._read_at >= self.RUNNING_EVERY and hasattr(pl_module, "running_train_figures"):
                self._read_at = now
                figures = pl_module.running_train_figures()
                self._running = {k.split("/")[1]: f"{float(v):.3f}" for k, v in figures.items()}
            if self._running:  # this epoch's figures so far replace the last epoch's
                metrics.pop("train/loss", None)
                metrics.pop("train/acc", None)
            metrics.update(self._running)
            eta = self._time_left(trainer)
            if eta is not None:
                metrics["ETA"] = eta
        return metrics

    def _time_left(self, trainer) -> str | None:
        """The whole run's time left: the estimate that RunConsole prints (one source for both)."""
        console = next((c for c in trainer.callbacks if isinstance(c, RunConsole)), None)
        seconds = console.time_left(trainer) if console is not None else None
        return None if seconds is None else duration(seconds)
