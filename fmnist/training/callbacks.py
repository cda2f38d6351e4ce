"""Lightning callbacks and plugins of fmnist: per-epoch training wall time, the stop on a diverged loss,
the Keras-style model summary, and what keeps a run folder's results safe: its lock, its checkpoints
(last.ckpt always the newest, paths stored relative to the folder) and their atomic writes."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from fmnist.errors import FmnistError
from fmnist.files import write_atomically
from fmnist.summary import keras_summary_markdown

# The fit-time figures of metrics.json, also kept in every checkpoint (`fmnist_fit`): a run stopped
# while testing is finished from its checkpoint without losing them.
FIT_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best")
LOCK_FILE = ".fmnist.lock"


def _synchronize(trainer: L.Trainer) -> None:
    if trainer.strategy.root_device.type == "cuda":
        torch.cuda.synchronize(trainer.strategy.root_device)


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
        checkpoint["fmnist_fit"] = {
            key: float(value) for key, value in trainer.callback_metrics.items() if key in FIT_KEYS
        }

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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, writing each local checkpoint with `write_atomically`.

    Lightning's own save writes a temporary file in the system's temp folder and, when that is another
    file system, copies it over the target in place: a crash in mid-copy leaves a truncated last.ckpt.
    """

    def __init__(self, run_dir: str | os.PathLike | None = None):
        self.run_dir = run_dir

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: fsspec's transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(path, buffer.getbuffer(), then=self._then())

    def _then(self) -> str:
        if self.run_dir is None:
            return ""
        from fmnist.resume import LAST_CHECKPOINT, resume_command  # fmnist.resume imports this module

        if (Path(self.run_dir) / LAST_CHECKPOINT).is_file():
            return f"continue the run with `{resume_command(self.run_dir)}`"
        return "start the run again"


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint for a run folder.

    `last.ckpt` is written at the end of every epoch (Lightning 2.6 writes it only with a new best, so
    it could be epochs behind), and the paths in the saved state are file names in the checkpoints
    folder, mapped into the folder the run is in now when it resumes: a run folder moved or copied
    elsewhere resumes and tests its own best checkpoint. A path that leads out of that folder is
    refused, since Lightning deletes the checkpoints it replaces.
    """

    _PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last(trainer)

    def _save_last(self, trainer) -> None:
        # Skipped when this step is saved already (with a new best), in the sanity check and outside fit.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        name = self._name
        state.update(
            {key: name(state[key]) for key in self._PATHS},
            dirpath=".",
            best_k_models={name(path): score for path, score in state["best_k_models"].items()},
        )
        return state

    def _name(self, path: str) -> str:
        return os.path.basename(path) if path and os.path.dirname(path) == self.dirpath else path

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_dir = state_dict.get("dirpath")
        best_k = state_dict.get("best_k_models") or {}
        if not isinstance(best_k, dict):
            raise FmnistError(
                f"the checkpoint's {self.state_key} state is not fmnist's: best_k_models is not a mapping"
            )
        mapped = {
            **state_dict,
            "dirpath": self.dirpath,
            **{key: self._here(state_dict.get(key), saved_dir) for key in self._PATHS},
            "best_k_models": {self._here(path, saved_dir): score for path, score in best_k.items()},
        }
        try:
            super().load_state_dict(mapped)
        except KeyError as error:
            raise FmnistError(f"the checkpoint's {self.state_key} state is not fmnist's: it has no {error}") from None

    def _here(self, path: Any, saved_dir: Any) -> str:
        """A checkpoint path from a saved state as that file in this checkpoints folder."""
        if not path:
            return ""
        if isinstance(path, str) and os.path.isabs(path) and isinstance(saved_dir, str):
            if os.path.dirname(path) == os.path.normpath(saved_dir):  # written before paths were names
                path = os.path.basename(path)
        if not isinstance(path, str) or os.path.dirname(path) or path in (".", ".."):
            raise FmnistError(
                f"the checkpoint's {self.state_key} state names {str(path)[:200]!r}, which is not a "
                "file of its checkpoints folder: refused (fmnist keeps and deletes checkpoints only "
                "in the run's own folder)"
            )
        return os.path.join(self.dirpath, path)


@contextlib.contextmanager
def run_folder_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run folder's lock while training in it: an fcntl lock on `.fmnist.lock`, which holds the
    pid. The OS drops it when the process ends, however it ends. Under DDP only rank 0 takes it (the
    other ranks train in the same folder)."""
    if rank_zero_only.rank != 0:
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise FmnistError(
            f"cannot write to the output folder {run_dir}: {error.strerror or error}. "
            "Fix: choose a writable folder with hydra.run.dir=PATH"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            holder = holder if holder.isdigit() else "unknown"
            raise FmnistError(
                f"{run_dir} is in use: fmnist.train process {holder} is training in it "
                f"(it holds {path}). Fix: wait until it ends, or stop it with `kill {holder}` "
                "(it saves last.ckpt) and resume then"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
