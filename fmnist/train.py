"""Train one of the study's networks: `python -m fmnist.train model=cnn|rnn|bilstm [key=value ...]`.

Fits with Lightning, tests the best checkpoint, and leaves in the run folder `.hydra/`,
`checkpoints/`, TensorBoard event files, `model_summary.md` and `metrics.json`.
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from fmnist.callbacks import EpochTimer, StopOnNonFiniteLoss
from fmnist.errors import FmnistError
from fmnist.reports import write_reports
from fmnist.summary import keras_param_counts

# The splits live in memory as tensors, so loader workers would only add overhead.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning 2.6 on torch >= 2.9 warns about its own use of a torch API; nothing for users to do.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def _check(cfg: DictConfig, key: str, ok, allowed: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value is not None and not ok(value):
        raise FmnistError(f"{key}={value} is out of range: {allowed}")


def check_config(cfg: DictConfig) -> None:
    """Reject out-of-range values with one line naming the key, before any data is loaded."""
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    _check(cfg, "data.batch_size", lambda v: is_int(v) and v >= 1, "must be an integer >= 1")
    _check(cfg, "data.eval_batch_size", lambda v: is_int(v) and v >= 1, "must be an integer >= 1 (or null)")
    _check(cfg, "data.val_fraction", lambda v: isinstance(v, (int, float)) and 0 < v < 1,
           "must be a number strictly between 0 and 1")
    _check(cfg, "data.num_workers", lambda v: is_int(v) and v >= 0, "must be an integer >= 0")
    _check(cfg, "trainer.max_epochs", lambda v: is_int(v) and (v >= 1 or v == -1),
           "must be an integer >= 1 (or -1 for no limit)")
    _check(cfg, "model.optimizer.lr", lambda v: isinstance(v, (int, float)) and v > 0, "must be a number > 0")
    _check(cfg, "seed", is_int, "must be an integer")
    _check(cfg, "torch_threads", lambda v: is_int(v) and v >= 1, "must be an integer >= 1 (or null)")


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
    """Fit, test the best checkpoint, write `metrics.json`; return the metrics."""
    check_config(cfg)
    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg.torch_threads)
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()  # fail on missing data now, with one clear message
    model: L.LightningModule = hydra.utils.instantiate(cfg.model)
    timer = EpochTimer()
    # The timer goes first so that its epoch ends before checkpoints are written.
    callbacks = [timer] + [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    fit_metrics = {k: _plain(v) for k, v in trainer.callback_metrics.items()}

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    test_results = [{}]
    if cfg.get("test", True):
        test_results = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=True)

    counts = keras_param_counts(model)
    metrics = {
        "model": cfg.get("name") or type(model).__name__,
        "model_class": type(model).__name__,
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
    guards = [c for c in trainer.callbacks if isinstance(c, StopOnNonFiniteLoss) and c.diverged_epoch]
    if guards:
        metrics["diverged_epoch"] = guards[0].diverged_epoch
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if cfg.get("test", True):
            report_run(cfg, trainer, model, datamodule, metrics)
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
    return metrics.get("val/acc_best", float("nan"))


if __name__ == "__main__":
    main()
