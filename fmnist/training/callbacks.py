"""Lightning callbacks and plugins of fmnist: per-epoch training wall time, the stop on a diverged loss,
the Keras-style model summary, the EMA of the weights that the test evaluates too, and what keeps a run
folder's results safe: its lock, its checkpoints (last.ckpt always the newest, paths stored relative to the
folder) and their atomic writes."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fmnist.data.datamodule import epoch_batches
from fmnist.models.summary import keras_summary_markdown
from fmnist.runs.metrics import FIT_KEY, FIT_KEYS, SHARE_KEY
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import write_atomically
from fmnist.utils.rng import random_state, set_random_state


class TestedEMA(EMAWeightAveraging):
    """Lightning's EMA of the weights (`EMAWeightAveraging`), whose averaged weights are also the ones tested.

    Lightning's callback puts the training weights of every checkpoint it is handed (`current_model_state`)
    back into the module, a test's checkpoint too: `trainer.test(ckpt_path=best)` after the fit would test the
    raw weights of the best epoch, not the averaged ones that were validated and chose it. Here only a fit
    (a resume) restores them; a test evaluates the checkpoint's `state_dict`, the averaged weights."""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def _synchronize(trainer: L.Trainer) -> None:
    if trainer.strategy.root_device.type == "cuda":
        torch.cuda.synchronize(trainer.strategy.root_device)


def epoch_share(trainer: L.Trainer, datamodule) -> dict[str, int]:
    """How many of the training split's images an epoch used (fewer with trainer.limit_train_batches)."""
    split = len(getattr(datamodule, "train_set", None) or ())
    steps = trainer.num_training_batches
    if not split or not isinstance(steps, int):
        return {}
    batches = epoch_batches(datamodule, steps, trainer.world_size)  # one process's share of the epoch
    return {"epoch_images": min(split, batches * datamodule.batch_size * trainer.world_size), "train_images": split}


class EpochTimer(L.Callback):
    """Wall time of each training epoch's batch loop (validation excluded), in `epoch_seconds`.

    Kept in checkpoints: a resumed run lists every epoch, the interrupted one with the time spent
    on it before and after the interruption. Checkpoints also get the fit-time figures (`fmnist_fit`).
    """

    def __init__(self):
        self.epoch_seconds: list[float] = []
        self._start: float | None = None
        self._loaded: dict | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _synchronize(trainer)
        self._start = time.perf_counter()

    def state_dict(self) -> dict:
        elapsed = None if self._start is None else time.perf_counter() - self._start
        return {"epoch_seconds": list(self.epoch_seconds), "elapsed": elapsed}

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = state_dict  # used if training resumes, not when a test loads the best checkpoint

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Saved after the epoch's figures are logged: the last epoch's, as metrics.json has them.
        checkpoint[FIT_KEY] = {key: float(value) for key, value in trainer.callback_metrics.items() if key in FIT_KEYS}
        checkpoint[SHARE_KEY] = epoch_share(trainer, trainer.datamodule)

    def on_train_start(self, trainer, pl_module) -> None:
        if self._loaded is not None:
            self.epoch_seconds = list(self._loaded["epoch_seconds"])
            if self._loaded["elapsed"] is not None:  # resumed in mid-epoch: no on_train_epoch_start for it
                self._start = time.perf_counter() - self._loaded["elapsed"]
            self._loaded = None

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


class TrainingDiverged(FmnistError):
    """The training loss became NaN or infinite: `epoch` and `step` (1-based) of the first bad loss."""

    def __init__(self, message: str, epoch: int, step: int | None):
        super().__init__(message)
        self.epoch, self.step = epoch, step


class StopOnNonFiniteLoss(L.Callback):
    """Ends training with TrainingDiverged when a training loss is NaN or infinite.

    Each step's loss is copied into a buffer on the device (no host sync per step) that is read once
    per epoch, before validation and so before that epoch's checkpoints: the diverged weights are
    never saved and `last.ckpt` stays the last good epoch.
    """

    def __init__(self):
        self._losses: torch.Tensor | None = None
        self._count = 0  # losses recorded in this epoch
        self._steps_before = 0  # trainer.global_step when the epoch started

    def on_train_start(self, trainer, pl_module) -> None:
        self.on_train_epoch_start(trainer, pl_module)  # a run resumed in mid-epoch starts here, not there

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._count, self._steps_before = 0, trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        losses = loss.detach().reshape(-1)  # a step over a chunk of batches may return one loss per batch
        end = self._count + len(losses)
        if self._losses is None or end > len(self._losses):
            grown = losses.new_empty(max(2 * end, 1024))
            if self._losses is not None:
                grown[: self._count] = self._losses[: self._count]
            self._losses = grown
        self._losses[self._count : end] = losses
        self._count = end

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer)  # epochs without validation

    def _check(self, trainer) -> None:
        bad = ~torch.isfinite(self._losses[: self._count]) if self._count else None
        local = bad is not None and bool(bad.any())  # the one host read
        if not trainer.strategy.reduce_boolean_decision(local, all=False):
            return
        epoch, step, value = trainer.current_epoch + 1, None, "nan or inf"
        if local:
            index = int(bad.int().argmax())
            step = self._steps_before + index // trainer.accumulate_grad_batches + 1
            value = str(self._losses[index].item())
        checkpoint = trainer.checkpoint_callback
        last_good = checkpoint and (checkpoint.last_model_path or checkpoint.best_model_path)
        at = f"epoch {epoch}, step {step}" if step else f"epoch {epoch} on another process"
        kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was saved before it"
        raise TrainingDiverged(
            f"training diverged: the training loss became {value} at {at}; {kept}. "
            "Fix: lower model.optimizer.lr or clip gradients with trainer.gradient_clip_val=1.0",
            epoch,
            step,
        )


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
            write_atomically(Path(self.output_dir) / "model_summary.md", text.encode())


class SaveOnInterrupt(L.Callback):
    """Ctrl-C or SIGTERM during training: finish the batch, save `last.ckpt`, stop.

    The signal only raises a flag. It is handed to Lightning (its SIGTERM flag, which makes the loops
    raise SIGTERMException at the next step boundary) after a training step or after a whole
    validation, never inside one, so the checkpoint is a consistent state to resume from. On the fast
    path, whose step is a chunk of batches, the module's `stop_in_chunk` ends the chunk after its current
    batch: Lightning's loop then counts the chunk as not trained, and the data module records how many
    of its batches were (`cut_chunk`), so that a resume trains the rest of it and then goes on as the
    uninterrupted run. A second Ctrl-C stops at once, without saving.
    """

    def __init__(self, dirpath: str, filename: str = "last"):
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.requested = False
        self._module: L.LightningModule | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.requested = False
        self._module = pl_module
        pl_module.stop_in_chunk = False
        # Lightning installed its SIGTERM handler before this hook and restores the previous
        # handlers of every signal when fit ends, these included.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:
            sys.stderr.write("\nstopping after this batch, then saving last.ckpt (Ctrl-C again: stop without saving)\n")
            sys.stderr.flush()
        self.requested = True
        if self._module is not None:
            self._module.stop_in_chunk = True

    def _raise_flag(self, trainer, up: bool) -> None:
        if self.requested:
            trainer._signal_connector.received_sigterm = up  # Lightning has no public setter

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        done = getattr(pl_module, "chunk_done", None)
        if done is not None:
            self._cut_chunk(trainer, done)
            raise SIGTERMException
        self._raise_flag(trainer, True)

    @staticmethod
    def _cut_chunk(trainer, done: int) -> None:
        # Lightning's counters as before this chunk's step (Lightning has no public setter): a resume
        # fetches the chunk again, and its data module skips the `done` batches already trained.
        progress = trainer.fit_loop.epoch_loop.batch_progress
        for tracker in (progress.total, progress.current):
            tracker.ready, tracker.started, tracker.processed = (tracker.completed,) * 3
        progress.is_last_batch = False
        trainer.datamodule.cut_chunk(done)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._raise_flag(trainer, False)  # the evaluation loop would stop in mid-validation

    def on_validation_end(self, trainer, pl_module) -> None:
        self._raise_flag(trainer, True)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.requested and isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path, weights_only=False)  # everything, to resume from


class RandomState(L.Callback):
    """Keeps torch's random state (CPU and CUDA: dropout) in checkpoints and puts it back when a
    resumed run starts training, so its draws continue those of the interrupted run."""

    def __init__(self):
        self._saved: dict | None = None

    def state_dict(self) -> dict:
        return random_state()

    def load_state_dict(self, state_dict: dict) -> None:
        self._saved = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        # Not on load: the sanity check and the validation loader draw from it before training starts.
        if self._saved is not None:
            set_random_state(self._saved)
            self._saved = None
