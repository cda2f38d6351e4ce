"""Interrupting and resuming training.

Ctrl-C or SIGTERM during training ends the current step, writes `checkpoints/last.ckpt` and stops;
`python -m fmnist.train resume=RUN_DIR` continues that run in its folder, with its config, from
that checkpoint. With the training loader's position (`fmnist.data.ResumableLoader`), the running
metrics (`FashionClassifier.on_save_checkpoint`) and the random state (`RandomState`) in the
checkpoint, a run resumed in mid-epoch computes what the uninterrupted run computes.
"""

from __future__ import annotations

import shlex
import signal
import threading
import zipfile
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from fmnist.errors import FmnistError

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
# What a resume may change: how long it goes on and how it runs, never what it computes.
RESUMABLE_KEYS = ("trainer.max_epochs", "trainer.max_time", "trainer.enable_progress_bar", "torch_threads", "test")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_files(run_dir: str | Path) -> tuple[Path, Path]:
    """The `.hydra/config.yaml` and `checkpoints/last.ckpt` of a run folder, or one clear FmnistError."""
    run = Path(run_dir)
    config, checkpoint = run / ".hydra" / "config.yaml", run / LAST_CHECKPOINT
    if not run.is_dir():
        raise FmnistError(f"resume={run_dir}: no such folder")
    if not config.is_file():
        raise FmnistError(f"resume={run_dir}: not a training run folder (it has no .hydra/config.yaml)")
    if not checkpoint.is_file():
        raise FmnistError(f"resume={run_dir}: nothing to resume, {checkpoint} does not exist "
                          "(the run stopped before its first checkpoint: start it again)")
    if not zipfile.is_zipfile(checkpoint):  # e.g. cut short by a kill while it was written
        raise FmnistError(f"resume={run_dir}: {checkpoint} is damaged. Fix: copy one of the run's "
                          "checkpoints/epoch_NNN.ckpt over it to resume from the end of that epoch")
    return config, checkpoint


def cli_args(argv: list[str]) -> list[str]:
    """The command line with `resume=RUN_DIR` checked, before Hydra makes any folder, and Hydra told
    to log into RUN_DIR (`train.log`) without rewriting the run's `.hydra/`."""
    given = [arg for arg in argv[1:] if arg.startswith("resume=")]
    if not given:
        return argv
    run_dir = OverridesParser.create().parse_overrides(given[-1:])[0].value()
    if run_dir is None:
        return argv
    run_files(str(run_dir))
    return [*argv, "hydra.run.dir=${resume}", "hydra.output_subdir=null"]


def resume_config(cfg: DictConfig, check: Callable[[DictConfig], None]) -> tuple[DictConfig, Path]:
    """The config of the run in `cfg.resume`, passed through `check`, and its `last.ckpt`.

    Command-line overrides other than RESUMABLE_KEYS are refused; the allowed ones are applied and,
    once checked, recorded in the run's `.hydra/config.yaml` and `overrides.yaml`, so that a later
    resume keeps them.
    """
    run = Path(cfg.resume)
    config_file, checkpoint = run_files(run)
    overrides = [o for o in HydraConfig.get().overrides.task if _key(o) != "resume"]
    refused = [o for o in overrides if _key(o) not in RESUMABLE_KEYS]
    if refused:
        raise FmnistError(f"resume={run} continues that run with its own config: {' '.join(refused)} "
                          f"cannot change on resume (only {', '.join(RESUMABLE_KEYS)} can)")
    saved = OmegaConf.load(config_file)
    for override in overrides:
        OmegaConf.update(saved, _key(override), OmegaConf.select(cfg, _key(override)), force_add=True)
    resolved = saved.copy()
    resolved.output_dir = str(run)  # wherever the folder is now
    resolved.resume = None
    _resolve_as_in_run(resolved, config_file.with_name("hydra.yaml"))
    check(resolved)
    if overrides:
        OmegaConf.save(saved, config_file)
        overrides_file = config_file.with_name("overrides.yaml")
        previous = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        OmegaConf.save(OmegaConf.create(previous + overrides), overrides_file)
    rank_zero_info(f"resuming {run} from {checkpoint}" + (f" with {' '.join(overrides)}" if overrides else ""))
    return resolved, checkpoint


def _resolve_as_in_run(cfg: DictConfig, hydra_file: Path) -> None:
    """Resolve `cfg` in place, `${hydra:...}` (e.g. the model's name) from the run's own `hydra.yaml`."""
    instance = HydraConfig.instance()
    current = instance.cfg
    if hydra_file.is_file():
        instance.cfg = OmegaConf.load(hydra_file)  # what HydraConfig.get() and `${hydra:...}` read
    try:
        OmegaConf.resolve(cfg)
    finally:
        instance.cfg = current


def interrupted_message(run_dir: str | Path) -> str:
    """The one line printed when a run is stopped by Ctrl-C or SIGTERM."""
    checkpoint = Path(run_dir) / LAST_CHECKPOINT
    if not checkpoint.is_file():
        return "interrupted before the first checkpoint: nothing to resume"
    return (f"interrupted: the run is saved in {checkpoint}; continue it with "
            f"`python -m fmnist.train resume={shlex.quote(str(run_dir))}`")


class SaveOnInterrupt(L.Callback):
    """Ctrl-C or SIGTERM during training: finish the step, save `last.ckpt`, stop.

    The signal only raises a flag. It is handed to Lightning (its SIGTERM flag, which makes the loops
    raise SIGTERMException at the next step boundary) after a training step or after a whole
    validation, never inside one, so the checkpoint is a consistent state to resume from. A second
    Ctrl-C stops at once, without saving.
    """

    def __init__(self, dirpath: str, filename: str = "last"):
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.requested = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.requested = False
        # Lightning installed its SIGTERM handler before this hook and restores the previous
        # handlers of every signal when fit ends, these included.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def _raise_flag(self, trainer, up: bool) -> None:
        if self.requested:
            trainer._signal_connector.received_sigterm = up  # Lightning has no public setter

    def on_train_batch_end(self, trainer, *args) -> None:
        self._raise_flag(trainer, True)

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
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
        return {"cpu": torch.get_rng_state(), "cuda": cuda}

    def load_state_dict(self, state_dict: dict) -> None:
        self._saved = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        # Not on load: the sanity check and the validation loader draw from it before training starts.
        if self._saved is not None:
            torch.set_rng_state(self._saved["cpu"])
            if self._saved["cuda"] and torch.cuda.is_initialized():
                torch.cuda.set_rng_state_all(self._saved["cuda"])
            self._saved = None
