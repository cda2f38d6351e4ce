"""Train one of the study's networks: `python -m fmnist.train model=cnn|rnn|bilstm [key=value ...]`.

Fits with Lightning, tests the best checkpoint, and leaves in the run folder `.hydra/`,
`checkpoints/`, TensorBoard event files, `model_summary.md` and `metrics.json`.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from fmnist.callbacks import EpochTimer, TrainingDiverged
from fmnist.errors import FmnistError
from fmnist.reports import write_reports
from fmnist.resume import cli_args, interrupted_message, resume_config
from fmnist.summary import keras_param_counts

# The splits live in memory as tensors, so loader workers would only add overhead.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning 2.6 on torch >= 2.9 warns about its own use of a torch API; nothing for users to do.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


# key: (type test, type name, range test or None, allowed values, whether null is allowed)
CONFIG_RULES: dict[str, tuple[Callable[[Any], bool], str, Callable[[Any], bool] | None, str, bool]] = {
    "data.batch_size": (_integer, "an integer", lambda v: v >= 1, "an integer >= 1", False),
    "data.eval_batch_size": (_integer, "an integer", lambda v: v >= 1, "an integer >= 1 (or null)", True),
    "data.val_fraction": (_number, "a number", lambda v: 0 < v < 1, "a number strictly between 0 and 1", False),
    "data.num_workers": (_integer, "an integer", lambda v: v >= 0, "an integer >= 0", False),
    "data.download": (_boolean, "true or false", None, "true or false", False),
    "trainer.max_epochs": (_integer, "an integer", lambda v: v >= 1 or v == -1,
                           "an integer >= 1 (or -1 for no limit)", True),
    "trainer.gradient_clip_val": (_number, "a number", lambda v: v >= 0, "a number >= 0 (or null)", True),
    "model.optimizer.lr": (_number, "a number", lambda v: v > 0, "a number > 0", False),
    "seed": (_integer, "an integer", None, "an integer", True),
    "test": (_boolean, "true or false", None, "true or false", False),
    "torch_threads": (_integer, "an integer", lambda v: v >= 1, "an integer >= 1 (or null)", True),
    "flush_denormal": (_boolean, "true or false", None, "true or false", True),
}


def check_config(cfg: DictConfig) -> None:
    """Reject values of the wrong type or range with one line naming the key, before any data is loaded."""
    for key, (is_type, type_name, in_range, allowed, nullable) in CONFIG_RULES.items():
        value = OmegaConf.select(cfg, key, default=KeyError)
        if value is KeyError or (value is None and nullable):
            continue
        if value is None or not is_type(value):
            raise FmnistError(f"{key}={'null' if value is None else value} is not {type_name}: must be {allowed}")
        if in_range is not None and not in_range(value):
            raise FmnistError(f"{key}={value} is out of range: must be {allowed}")
    if OmegaConf.select(cfg, "model.fast_step", default=False):
        if OmegaConf.select(cfg, "trainer.gradient_clip_val", default=None):
            raise FmnistError("trainer.gradient_clip_val does not apply to the fast path (trainer=gpu_fast steps the "
                              "optimizer itself): drop it, or train with trainer=gpu")
    if OmegaConf.select(cfg, "data.device_resident", default=False) and OmegaConf.select(cfg, "data.num_workers"):
        raise FmnistError("data.num_workers must be 0 with data.device_resident=true (the splits are on the device)")


MIN_FREE_BYTES = 100 * 2**20  # a run's checkpoints, event files and reports (the BiLSTM's checkpoints: 32 MB)


def check_output_dir(path: Path) -> None:
    """Fail now, naming the folder, if the run could not write its results there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"fmnist")
            probe.flush()
    except OSError as error:
        raise FmnistError(f"cannot write to the output folder {path}: {error.strerror or error}. "
                          "Fix: choose a writable folder with hydra.run.dir=PATH") from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise FmnistError(f"the output folder {path} has {free / 2**20:.0f} MiB free, a run needs at least "
                          f"{MIN_FREE_BYTES // 2**20} MiB. Fix: free some space or choose another folder with "
                          "hydra.run.dir=PATH")


def describe_device(trainer: L.Trainer) -> str:
    """A short human description of where training ran, e.g. 'NVIDIA H200' or 'cpu (2 threads)'."""
    device = trainer.strategy.root_device
    count = f"{trainer.world_size}x " if trainer.world_size > 1 else ""
    if device.type == "cuda":
        return count + torch.cuda.get_device_name(device)
    return count + f"{device.type} ({platform.machine()}, {torch.get_num_threads()} threads)"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) else value


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, write `metrics.json`; return the metrics.

    A diverged run still tests its best checkpoint from before the divergence and writes
    `metrics.json` ("status": "diverged"), then raises TrainingDiverged.
    """
    ckpt_path = None
    if cfg.get("resume"):
        cfg, ckpt_path = resume_config(cfg, check_config)
    else:
        check_config(cfg)
    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg.torch_threads)
    torch.set_flush_denormal(bool(cfg.get("flush_denormal")))  # a run's config without the key: as before
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.output_dir)
    check_output_dir(output_dir)

    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()  # fail on missing data now, with one clear message
    model: L.LightningModule = hydra.utils.instantiate(cfg.model)
    timer = EpochTimer()
    # The timer goes first so that its epoch ends before checkpoints are written.
    callbacks = [timer] + [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    start = time.perf_counter()
    diverged: TrainingDiverged | None = None
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except TrainingDiverged as error:
        diverged = error
    train_seconds = time.perf_counter() - start
    fit_metrics = {k: _plain(v) for k, v in trainer.callback_metrics.items()}

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    test_results = [{}]
    tested = cfg.get("test", True) and bool(best or not diverged)  # never the diverged weights
    if tested:
        test_results = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=True,
                                    weights_only=True)

    counts = keras_param_counts(model)
    metrics = {
        "model": cfg.get("name") or type(model).__name__,
        "model_class": type(model).__name__,
        "status": "diverged" if diverged else "completed",
        "seed": cfg.seed,
        "device": describe_device(trainer),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "batch_size": datamodule.batch_size,
        "optimizer": model.hparams["optimizer"],
        **{k: fit_metrics[k] for k in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best")
           if k in fit_metrics},
        **{k: _plain(v) for k, v in test_results[0].items()},
        "train_seconds": train_seconds,
        "epoch_seconds": timer.epoch_seconds,
        "params_trainable": counts["trainable"],
        "params_total_keras": counts["total"],
        "best_checkpoint": best,
    }
    if diverged:
        metrics.update(diverged_epoch=diverged.epoch, diverged_step=diverged.step, error=str(diverged))
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if tested:
            report_run(cfg, trainer, model, datamodule, metrics)
    if diverged:
        raise diverged
    return metrics


def hparams_for_tensorboard(cfg: DictConfig, model: L.LightningModule) -> dict[str, Any]:
    """The run's hyperparameters as flat scalars/strings for TensorBoard's HPARAMS tab."""
    params = {"model": cfg.get("name"), "seed": cfg.seed, "batch_size": cfg.data.batch_size,
              "max_epochs": cfg.trainer.max_epochs, "val_fraction": cfg.data.val_fraction}
    for key, value in model.hparams["optimizer"].items():
        params[f"optimizer/{key.strip('_')}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    for key, value in model.hparams.items():
        if key != "optimizer":
            params[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return params


def report_run(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule, datamodule, metrics: dict) -> None:
    """Reports of the tested (best) weights in the run folder and TensorBoard, plus the HPARAMS entry."""
    tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    if tensorboard is not None:
        tensorboard.experiment.flush()
    write_reports(model, datamodule.test_dataloader(), datamodule.class_names, cfg.output_dir,
                  device=trainer.strategy.root_device, title=str(metrics["model"]),
                  tensorboard_dir=tensorboard.log_dir if tensorboard else None,
                  writer=tensorboard.experiment if tensorboard else None, step=trainer.global_step)
    if tensorboard is not None:
        final = {k: metrics[k] for k in ("val/acc_best", "test/acc", "test/macro_f1", "train_seconds") if k in metrics}
        tensorboard.log_hyperparams(hparams_for_tensorboard(cfg, model), metrics=final)
        tensorboard.experiment.flush()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns `val/acc_best` for sweepers."""
    try:
        metrics = train(cfg)
    except FmnistError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed job and the sweep goes on with the others
        raise SystemExit(f"error: {error}") from None
    except SIGTERMException:  # Ctrl-C or SIGTERM: stops a sweep too
        raise SystemExit(interrupted_message(cfg.resume or cfg.output_dir)) from None
    return metrics.get("val/acc_best", float("nan"))


if __name__ == "__main__":
    try:
        sys.argv = cli_args(sys.argv)
    except FmnistError as error:
        raise SystemExit(f"error: {error}") from None
    main()
