"""Lightning callbacks of fmnist: per-epoch training wall time, and the Keras-style model summary."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from fmnist.summary import keras_summary_markdown


def _synchronize(trainer: L.Trainer) -> None:
    if trainer.strategy.root_device.type == "cuda":
        torch.cuda.synchronize(trainer.strategy.root_device)


class EpochTimer(L.Callback):
    """Wall time of each training epoch's batch loop (validation excluded), in `epoch_seconds`."""

    def __init__(self):
        self.epoch_seconds: list[float] = []
        self._start: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _synchronize(trainer)
        self._start = time.perf_counter()

    def _stop(self, trainer) -> None:
        if self._start is not None:
            _synchronize(trainer)
            self.epoch_seconds.append(time.perf_counter() - self._start)
            self._start = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._stop(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop(trainer)


class StopOnNonFiniteLoss(L.Callback):
    """Stops training when an epoch's mean training loss is NaN or infinite (a diverged network).

    Checked once per epoch on the logged epoch mean, so there is no host sync per step. The best
    checkpoint from before the divergence is what the run then tests.
    """

    def __init__(self, monitor: str = "train/loss"):
        self.monitor = monitor
        self.diverged_epoch: int | None = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        loss = trainer.callback_metrics.get(self.monitor)
        if loss is None or torch.isfinite(loss).all():
            return
        self.diverged_epoch = trainer.current_epoch + 1
        trainer.should_stop = True
        rank_zero_warn(
            f"epoch {self.diverged_epoch}: {self.monitor} is {loss.item()}, training diverged and stops here. "
            "Fix: clip gradients (trainer.gradient_clip_val=1.0) or lower model.optimizer.lr.")


class KerasModelSummary(L.Callback):
    """Prints the Keras-style summary when fitting starts and writes it to `model_summary.md`."""

    def __init__(self, output_dir: str | None = None):
        self.output_dir = output_dir

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        text = keras_summary_markdown(pl_module)
        rank_zero_info(text)
        if self.output_dir:
            Path(self.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.output_dir) / "model_summary.md").write_text(text)
