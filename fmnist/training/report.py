"""What a finished run says: its metrics.json record, its reports and TensorBoard entry, and the next commands."""

from __future__ import annotations

import inspect
import shlex
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger
from omegaconf import DictConfig
from torch.utils.tensorboard.summary import hparams as hparams_summary

from fmnist.analysis.reports import REPORT_FILES, write_reports
from fmnist.analysis.runs import partial_epochs
from fmnist.models.summary import keras_param_counts
from fmnist.models.trust import constructor_parameters
from fmnist.runs.metrics import FIT_KEYS
from fmnist.training.callbacks import epoch_share
from fmnist.training.console import describe_device
from fmnist.utils.config import hydra_value


def next_steps(run_dir: Path, metrics: dict, logger_cfg: DictConfig | None = None) -> str:
    """Where the run is, what it reached, and the commands that look at it, with its folder filled in (its
    loggers' viewers: TensorBoard's unless `logger_cfg` has none, MLflow's UI where it has one)."""
    lines = [f"run folder: {shlex.quote(str(run_dir))}"]
    if isinstance(metrics.get("test/acc"), float):
        tta = f", {metrics['test/acc_tta']:.4f} with flip TTA" if isinstance(metrics.get("test/acc_tta"), float) else ""
        best = metrics["best_checkpoint"]
        lines.append(f"test accuracy: {metrics['test/acc']:.4f}{tta} (best checkpoint on validation: {best})")
    checkpoint = hydra_value(str(run_dir / (metrics.get("best_checkpoint") or "checkpoints/last.ckpt")))
    targets = {name: str(c.get("_target_", "")) for name, c in (logger_cfg or {}).items()}
    viewers = []
    if logger_cfg is None or any(t.endswith("TensorBoardLogger") for t in targets.values()):
        viewers.append(f"  tensorboard --logdir {shlex.quote(str(run_dir / 'tensorboard'))}")
    for name, target in targets.items():
        uri = str(logger_cfg[name].get("tracking_uri"))
        if target.endswith("MLFlowLogger") and uri.startswith("sqlite:"):  # a server has its own UI already
            viewers.append(f"  mlflow ui --backend-store-uri {shlex.quote(uri)}")
    lines += [
        "next:",
        *viewers,
        f"  python -m fmnist.evaluate {shlex.quote('ckpt_path=' + checkpoint)}",
        f"  python -m fmnist.predict {shlex.quote('ckpt_path=' + checkpoint)} inputs=YOUR_IMAGES",
    ]
    return "\n".join(lines)


def record(
    cfg: DictConfig,
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule,
    *,
    status: str,
    epochs: int,
    steps: int,
    fit: dict,
    test: dict,
    train_seconds: float,
    epoch_seconds: list[float],
    best: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """The run's metrics.json."""
    counts = keras_param_counts(model)
    return {
        "model": cfg.get("name") or type(model).__name__,
        "model_class": type(model).__name__,
        "status": status,
        "seed": cfg.seed,
        "device": describe_device(trainer),
        "epochs": epochs,
        "steps": steps,
        "batch_size": datamodule.batch_size,
        **epoch_share(trainer, datamodule),
        "optimizer": model.hparams["optimizer"],
        **{k: fit[k] for k in FIT_KEYS if k in fit},
        **test,
        "train_seconds": train_seconds,
        "epoch_seconds": epoch_seconds,
        "params_trainable": counts["trainable"],
        "params_total_keras": counts["total"],
        "best_checkpoint": best,
        **extra,
    }


def hparams_for_tensorboard(cfg: DictConfig, model: L.LightningModule) -> dict[str, Any]:
    """The run's hyperparameters as flat scalars/strings for TensorBoard's HPARAMS tab."""
    params = {
        "model": cfg.get("name"),
        "seed": cfg.seed,
        "batch_size": cfg.data.batch_size,
        "max_epochs": cfg.trainer.max_epochs,
        "val_fraction": cfg.data.val_fraction,
    }
    for key, value in model.hparams["optimizer"].items():
        params[f"optimizer/{key.strip('_')}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    defaults = {name: p.default for name, p in constructor_parameters(type(model)).items()}
    for key, value in model.hparams.items():  # only what this run set: a column per choice, not per option
        default = defaults.get(key, inspect.Parameter.empty)
        same = value == default or (isinstance(default, tuple) and list(default) == list(value or ()))
        if key != "optimizer" and not same:
            params[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return params


# The run's settings that Lightning's own hyperparameter logging (the model's) leaves out and a resume keeps.
RUN_PARAMS = ("model", "seed", "batch_size", "val_fraction")


def log_run_params(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule) -> None:
    """The run's settings and optimizer (RUN_PARAMS, `optimizer/*`) for its loggers other than TensorBoard
    (whose HPARAMS entry `report_run` writes): CSV's hparams.yaml, MLflow's params."""
    params = {
        key: value
        for key, value in hparams_for_tensorboard(cfg, model).items()
        if key in RUN_PARAMS or key.startswith("optimizer/")
    }
    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params)


def report_run(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule, datamodule, metrics: dict) -> None:
    """Reports of the tested (best) weights in the run folder, TensorBoard and MLflow (as artifacts), plus
    TensorBoard's HPARAMS entry."""
    tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    if tensorboard is not None:
        tensorboard.experiment.flush()
    epochs = int(metrics.get("epochs") or trainer.current_epoch)
    write_reports(
        model,
        datamodule.test_dataloader(),
        datamodule.class_names,
        cfg.output_dir,
        device=trainer.strategy.root_device,
        title=type(model).__name__ + (f" ({part})" if (part := partial_epochs(metrics)) else ""),  # as evaluate's
        tensorboard_dir=tensorboard.log_dir if tensorboard else None,
        writer=tensorboard.experiment if tensorboard else None,
        step=epochs,  # the report images at the run's last epoch, like its test figures
    )
    for mlflow in (lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)):
        for name in REPORT_FILES:  # MLflow keeps files as the run's artifacts
            if (Path(cfg.output_dir) / name).is_file():
                mlflow.experiment.log_artifact(mlflow.run_id, str(Path(cfg.output_dir) / name), "reports")
    if tensorboard is not None:
        experiment = tensorboard.experiment
        if isinstance(metrics.get("train_seconds"), float):
            experiment.add_scalar("train_seconds", metrics["train_seconds"], epochs)
        # The HPARAMS entry names its metrics; their values are the scalars logged at their epochs (Lightning's
        # log_hyperparams would log them again at step 0).
        final = {k: metrics[k] for k in ("val/acc_best", "test/acc", "test/macro_f1", "train_seconds") if k in metrics}
        for summary in hparams_summary(hparams_for_tensorboard(cfg, model), final):
            experiment.file_writer.add_summary(summary)
        experiment.close()  # Lightning closed it after the test; the reports reopened it (a file and a thread)
