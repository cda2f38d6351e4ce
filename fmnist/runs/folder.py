"""A run folder's paths, its lock, its checkpoints written whole, and the commands that continue it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import shlex
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fmnist.utils.config import hydra_value
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import open_lock, write_atomically

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
LOCK_FILE = ".fmnist.lock"


def run_files(run_dir: str | Path) -> tuple[Path, Path]:
    """The `.hydra/config.yaml` and `checkpoints/last.ckpt` of a run folder, or one clear FmnistError."""
    run = Path(run_dir)
    config, checkpoint = run / ".hydra" / "config.yaml", run / LAST_CHECKPOINT
    if not run.is_dir():
        raise FmnistError(f"resume={run_dir}: no such folder")
    if not config.is_file():
        raise FmnistError(f"resume={run_dir}: not a training run folder (it has no .hydra/config.yaml)")
    if not checkpoint.is_file():
        raise FmnistError(
            f"resume={run_dir}: nothing to resume, {checkpoint} does not exist "
            "(the run stopped before its first checkpoint: start it again)"
        )
    if not zipfile.is_zipfile(checkpoint):  # e.g. cut short by a kill while it was written
        raise FmnistError(
            f"resume={run_dir}: {checkpoint} is damaged. Fix: copy one of the run's "
            "checkpoints/epoch_NNN.ckpt over it to resume from the end of that epoch"
        )
    return config, checkpoint


def resume_command(run_dir: str | Path) -> str:
    """`python -m fmnist.train resume=RUN_DIR`, quoted for Hydra's override grammar and then for the
    shell, so that it works when pasted whatever the folder's name."""
    return f"python -m fmnist.train {shlex.quote('resume=' + hydra_value(str(run_dir), 'resume'))}"


def interrupted_message(run_dir: str | Path) -> str:
    """The one line printed when a run is stopped by Ctrl-C or SIGTERM."""
    checkpoint = Path(run_dir) / LAST_CHECKPOINT
    if not checkpoint.is_file():
        return "interrupted before the first checkpoint: nothing to resume"
    return f"interrupted: the run is saved in {checkpoint}; continue it with `{resume_command(run_dir)}`"


RUN_MARKERS = ("metrics.json", "checkpoints")  # the results that make a folder a run's


def holds_run(folder: Path) -> bool:
    """Whether `folder` holds a run's results (RUN_MARKERS; a dangling link counts)."""
    return any(os.path.lexists(folder / marker) for marker in RUN_MARKERS)


def run_folders(folder: Path, depth: int = 3) -> Iterator[Path]:
    """The run folders under `folder`, down to `depth` levels (a custom hydra.sweep.subdir may nest them);
    links are not followed."""
    if depth == 0 or folder.is_symlink() or not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            if holds_run(child):
                yield child
            else:
                yield from run_folders(child, depth - 1)


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
        lock = open_lock(path)
    except OSError as error:
        reason = "it is a link, which fmnist never follows" if error.errno == errno.ELOOP else error.strerror
        raise FmnistError(
            f"cannot take the lock {path}: {reason or error}. Fix: choose a writable folder with hydra.run.dir=PATH"
        ) from None
    with lock:  # closing the file releases the lock
        fd = lock.fileno()
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

    def format_checkpoint_name(self, metrics: dict, *args: Any, **kwargs: Any) -> str:
        # `{epoch}` counts from 1, as the progress bar, the log and Keras do: epoch_001.ckpt is the first.
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, *args, **kwargs)

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


def restore_best(trainer: L.Trainer, checkpoint: dict) -> str:
    """The best checkpoint that a resumed run's last.ckpt records, in the folder the run is in now."""
    callback = trainer.checkpoint_callback
    states = checkpoint.get("callbacks")
    state = states.get(callback.state_key) if callback is not None and isinstance(states, dict) else None
    if isinstance(state, dict):
        callback.load_state_dict(state)
    return best_path(trainer)


def best_path(trainer: L.Trainer) -> str:
    """The best checkpoint's path; in this run's checkpoints folder if the one recorded has moved (the
    absolute paths that Lightning's own ModelCheckpoint keeps, in runs from before RunCheckpoint)."""
    callback = trainer.checkpoint_callback
    best = callback.best_model_path if callback is not None else ""
    if best and not Path(best).is_file() and callback.dirpath:
        moved = Path(callback.dirpath) / Path(best).name
        if moved.is_file():
            return str(moved)
    if best and not Path(best).is_file():
        raise FmnistError(
            f"the run's best checkpoint {best} is gone, so its test cannot run. Fix: copy the "
            "checkpoint back, or test another one with `python -m fmnist.evaluate ckpt_path=...`"
        )
    return best


def in_run(path: str, run_dir: Path) -> str:
    """`path` relative to the run folder when it is inside it: the folder can be moved or copied."""
    if not path:
        return ""
    try:
        return Path(path).resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return path
