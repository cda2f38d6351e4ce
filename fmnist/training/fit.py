"""Train one of the study's networks: `python -m fmnist.train model=cnn|rnn|bilstm [key=value ...]`.

Fits with Lightning, tests the best checkpoint, and leaves in the run folder `.hydra/`,
`checkpoints/`, TensorBoard event files, `model_summary.md` and `metrics.json`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from omegaconf import DictConfig, ListConfig, OmegaConf

from fmnist.callbacks import (
    FIT_KEYS,
    AtomicCheckpointIO,
    EpochTimer,
    TrainingDiverged,
    run_folder_lock,
    write_atomically,
)
from fmnist.checks import (
    DATA_RULES,
    SEED_RANGE,
    Rule,
    boolean,
    check_output_folder,
    check_values,
    integer,
    number,
    seed_in_range,
    shown,
)
from fmnist.data import check_root, count_images, validation_size
from fmnist.errors import FmnistError
from fmnist.progress import EpochProgressBar
from fmnist.reports import write_reports
from fmnist.resume import (
    Resume,
    check_weights,
    cli_args,
    interrupted_message,
    metrics_describe,
    never_poorer,
    resume_config,
    run_files,
    saved_fit,
)
from fmnist.summary import keras_param_counts
from fmnist.sweeps import FailedJob

# The splits live in memory as tensors, so loader workers would only add overhead.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning 2.6 on torch >= 2.9 warns about its own use of a torch API; nothing for users to do.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def _probability(value: Any) -> bool:
    return 0 <= value < 1  # Keras's Dropout rate; 1 would zero every activation


def _dropouts(count: int) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, (list, ListConfig)) and len(value) == count and all(map(number, value))


def _batches(value: Any) -> bool:
    return value >= 1 if integer(value) else 0 < value <= 1  # Lightning: an int counts batches, a float is a share


def _devices(value: Any) -> bool:
    return integer(value) or value == "auto" or (isinstance(value, (list, ListConfig)) and all(map(integer, value)))


def _duration(value: Any) -> bool:
    try:  # Lightning's own parser of trainer.max_time
        Timer(duration=value)
    except (MisconfigurationException, TypeError, ValueError):
        return False
    return isinstance(value, str)  # a {hours: ...} mapping would reach Lightning as a DictConfig, which it rejects


LIMIT = "an integer >= 1 (batches) or a fraction in (0, 1] (or null)"
CONFIG_RULES: dict[str, Rule] = {
    **DATA_RULES,
    "data.batch_size": (integer, "an integer", lambda v: v >= 1, "an integer >= 1", False),
    "trainer.max_epochs": (
        integer,
        "an integer",
        lambda v: v >= 1 or v == -1,
        "an integer >= 1 (or -1 for no limit)",
        True,
    ),
    "trainer.max_steps": (
        integer,
        "an integer",
        lambda v: v >= 1 or v == -1,
        "an integer >= 1 (or -1 for no limit)",
        False,
    ),
    "trainer.max_time": (
        _duration,
        "a duration DD:HH:MM:SS",
        lambda v: Timer(duration=v).time_remaining() > 0,
        "a duration DD:HH:MM:SS longer than 0, e.g. 00:12:00:00 for 12 hours (or null)",
        True,
    ),
    "trainer.limit_train_batches": (number, "a number", _batches, LIMIT, True),
    "trainer.limit_val_batches": (number, "a number", _batches, LIMIT, True),
    "trainer.limit_test_batches": (number, "a number", _batches, LIMIT, True),
    "trainer.check_val_every_n_epoch": (integer, "an integer", lambda v: v >= 1, "an integer >= 1 (or null)", True),
    "trainer.devices": (
        _devices,
        "an integer, a list of device numbers or auto",
        lambda v: v not in (0, []),
        "an integer >= 1, -1 for all, a list of device numbers or auto",
        False,
    ),
    "trainer.gradient_clip_val": (number, "a number", lambda v: v >= 0, "a number >= 0 (or null)", True),
    "model.optimizer.lr": (number, "a number", lambda v: v > 0, "a number > 0", False),
    "model.conv_dropout": (
        _dropouts(3),
        "a list of 3 numbers",
        lambda v: all(map(_probability, v)),
        "a list of 3 numbers in [0, 1), one per convolution stage",
        False,
    ),
    "model.dense_dropout": (number, "a number", _probability, "a number in [0, 1)", False),
    "model.dropout": (number, "a number", _probability, "a number in [0, 1)", False),
    "seed": (integer, "an integer", seed_in_range, f"{SEED_RANGE} (or null)", True),
    "test": (boolean, "true or false", None, "true or false", False),
    "torch_threads": (integer, "an integer", lambda v: v >= 1, "an integer >= 1 (or null)", True),
    "flush_denormal": (boolean, "true or false", None, "true or false", True),
}


def check_config(cfg: DictConfig) -> None:
    """Reject values of the wrong type or range with one line naming the key, before any data is loaded."""
    check_values(cfg, CONFIG_RULES)
    check_root(cfg.data.root)
    if OmegaConf.select(cfg, "model.fast_step", default=False):
        if OmegaConf.select(cfg, "trainer.gradient_clip_val", default=None):
            raise FmnistError(
                "trainer.gradient_clip_val does not apply to the fast path (trainer=gpu_fast steps the "
                "optimizer itself): drop it, or train with trainer=gpu"
            )
    if OmegaConf.select(cfg, "data.device_resident", default=False) and OmegaConf.select(cfg, "data.num_workers"):
        raise FmnistError("data.num_workers must be 0 with data.device_resident=true (the splits are on the device)")
    every, epochs = (OmegaConf.select(cfg, f"trainer.{key}") for key in ("check_val_every_n_epoch", "max_epochs"))
    if every and epochs and epochs != -1 and every > epochs:
        raise FmnistError(
            f"trainer.check_val_every_n_epoch={every} is more than trainer.max_epochs={epochs}: no "
            "epoch would be validated and no best checkpoint kept. Fix: lower "
            "trainer.check_val_every_n_epoch"
        )
    check_accelerator(cfg)


def check_accelerator(cfg: DictConfig) -> None:
    """trainer.accelerator must name one of Lightning's accelerators that this machine has, with devices it has."""
    name, devices = OmegaConf.select(cfg, "trainer.accelerator"), OmegaConf.select(cfg, "trainer.devices")
    known = sorted(AcceleratorRegistry.available_accelerators())
    if name not in (*known, "gpu", "auto", None):
        raise FmnistError(
            f"trainer.accelerator={name} is not one of Lightning's accelerators: must be auto, gpu or "
            f"{', '.join(known)}"
        )
    candidates = {"gpu": ("cuda", "mps"), "auto": ("cuda", "mps", "cpu"), None: ("cuda", "mps", "cpu")}
    candidates = candidates.get(name, (name,))
    available = [n for n in candidates if AcceleratorRegistry[n]["accelerator"].is_available()]
    if not available:
        what = {"gpu": "GPU", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)"}.get(name, name.upper())
        raise FmnistError(
            f"trainer.accelerator={name}: this machine has no {what} that torch can use. Fix: train on "
            "the CPU with trainer.accelerator=cpu (trainer=cpu_fast in place of trainer=gpu_fast, "
            "trainer=ddp_cpu in place of trainer=ddp)"
        )
    if devices == "auto":
        return
    try:  # Lightning's own check of the devices against the machine
        AcceleratorRegistry[available[0]]["accelerator"].parse_devices(
            OmegaConf.to_container(devices) if isinstance(devices, ListConfig) else devices
        )
    except (MisconfigurationException, TypeError, ValueError) as error:
        raise FmnistError(
            f"trainer.devices={shown(devices)} cannot run on {available[0]} here: "
            f"{' '.join(str(error).split())} Fix: trainer.devices=1, or auto"
        ) from None


def check_splits(cfg: DictConfig, model: L.LightningModule) -> None:
    """Refuse splits that training cannot use, from the image counts in the data's headers (no image is read)."""
    data, trainer = cfg.data, cfg.trainer
    n_images = count_images(data.root, train=True)
    n_val = validation_size(n_images, data.val_fraction)
    n_train = n_images - n_val
    if n_val == 0:
        raise FmnistError(
            f"data.val_fraction={data.val_fraction} leaves no validation image ({n_images:,} x "
            f"{data.val_fraction} rounds to 0), so no best checkpoint could be chosen. Fix: "
            f"data.val_fraction={1 / n_images:.2g} or more"
        )
    if n_train < data.batch_size:
        raise FmnistError(
            f"data.batch_size={data.batch_size} is larger than the training split: "
            f"data.val_fraction={data.val_fraction} leaves {n_train:,} of the {n_images:,} training "
            "images. Fix: lower data.batch_size or data.val_fraction"
        )
    if n_train % data.batch_size == 1 and any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()):
        raise FmnistError(
            f"data.batch_size={data.batch_size} leaves a last training batch of 1 image "
            f"({n_train:,} = {n_train // data.batch_size:,} x {data.batch_size} + 1), which "
            f"{type(model).__name__}'s BatchNorm cannot train on. Fix: choose another data.batch_size"
        )
    per_step = data.batch_size * (OmegaConf.select(cfg, "data.batches_per_step") or 1)
    eval_batch = OmegaConf.select(cfg, "data.eval_batch_size") or data.batch_size
    splits = {"train": (n_train, per_step), "val": (n_val, eval_batch)}
    if cfg.get("test", True):
        splits["test"] = (count_images(data.root, train=False), eval_batch)
    for split, (n, batch) in splits.items():
        limit, batches = trainer.get(f"limit_{split}_batches"), math.ceil(n / batch)
        if isinstance(limit, float) and int(batches * limit) == 0:  # Lightning rounds the share down
            name = {"train": "training", "val": "validation"}.get(split, split)
            raise FmnistError(
                f"trainer.limit_{split}_batches={limit} leaves no {name} batch ({batches:,} batches x "
                f"{limit} < 1). Fix: trainer.limit_{split}_batches=1 (an integer counts batches), or a "
                "larger share"
            )


MIN_FREE_BYTES = 100 * 2**20  # a run's checkpoints, event files and reports (the BiLSTM's checkpoints: 32 MB)


def check_output_dir(path: Path) -> None:
    """Fail now, naming the folder, if the run could not write its results there."""
    check_output_folder(path, key="hydra.run.dir")
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise FmnistError(
            f"the output folder {path} has {free / 2**20:.0f} MiB free, a run needs at least "
            f"{MIN_FREE_BYTES // 2**20} MiB. Fix: free some space or choose another folder with "
            "hydra.run.dir=PATH"
        )


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

    The run folder is locked meanwhile (`run_folder_lock`). With `resume=RUN_DIR` the run trains on
    if it has epochs left, is only tested if its fit is over, and is left as it is if it is finished.
    A diverged run still tests its best checkpoint from before the divergence and writes
    `metrics.json` ("status": "diverged"), then raises TrainingDiverged.
    """
    with contextlib.ExitStack() as stack:
        resume = None
        if cfg.get("resume"):
            run_files(str(cfg.resume))  # a missing folder is named, not made by the lock
            stack.enter_context(run_folder_lock(str(cfg.resume)))
            resume = resume_config(cfg, check_config)
            if resume.plan == "finished":
                return dict(resume.previous or {})
            cfg = resume.cfg
        else:
            check_config(cfg)
        if cfg.get("torch_threads"):
            torch.set_num_threads(cfg.torch_threads)
        torch.set_flush_denormal(bool(cfg.get("flush_denormal")))  # a run's config without the key: as before
        L.seed_everything(cfg.seed, workers=True)
        output_dir = Path(cfg.output_dir)
        check_output_dir(output_dir)
        if resume is None:
            stack.enter_context(run_folder_lock(output_dir))
        return _fit_and_test(cfg, output_dir, resume)


def _fit_and_test(cfg: DictConfig, output_dir: Path, resume: Resume | None) -> dict[str, Any]:
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()  # fail on missing data now, with one clear message
    model: L.LightningModule = hydra.utils.instantiate(cfg.model)
    check_splits(cfg, model)
    if resume is not None:
        check_weights(resume, model)
        resume.record_overrides()
    timer = EpochTimer()
    # The timer goes first so that its epoch ends before checkpoints are written.
    callbacks = [timer] + [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if cfg.trainer.get("enable_progress_bar") is not False:
        callbacks.append(EpochProgressBar())  # epochs counted from 1, as Keras and the study do
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    checkpoint_io = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO(output_dir)]}
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, **checkpoint_io
    )
    previous = resume.previous if resume is not None else None
    record = functools.partial(_record, cfg, trainer, model, datamodule)

    if resume is not None and resume.plan == "finish":  # the fit is over: test, with what the run saved
        best = _restore_best(trainer, resume)
        tested = cfg.get("test", True)
        test = _test(trainer, model, datamodule, best or str(resume.path)) if tested else {}
        if metrics_describe(previous, resume.checkpoint):
            metrics = {**{k: v for k, v in previous.items() if not k.startswith("test/")}, **test}
            metrics.pop("test_checkpoint", None)
        else:
            fit, epoch_seconds = saved_fit(resume)
            # The session times are lost with the process; the epochs' sum is what the checkpoint keeps.
            metrics = record(
                status="completed",
                epochs=resume.checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"],
                steps=resume.checkpoint["global_step"],
                fit=fit,
                test=test,
                train_seconds=sum(epoch_seconds),
                epoch_seconds=epoch_seconds,
            )
        metrics["best_checkpoint"] = _in_run(best, output_dir)
        diverged = None
    else:
        start = time.perf_counter()
        diverged: TrainingDiverged | None = None
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=resume.path if resume else None, weights_only=True)
        except TrainingDiverged as error:
            diverged = error
        fit = {k: _plain(v) for k, v in trainer.callback_metrics.items() if k in FIT_KEYS}
        best = _best_path(trainer)
        record = functools.partial(
            record,
            status="diverged" if diverged else "completed",
            epochs=trainer.current_epoch,
            steps=trainer.global_step,
            fit=fit,
            train_seconds=time.perf_counter() - start,
            epoch_seconds=timer.epoch_seconds,
            best=_in_run(best, output_dir),
            **(
                {"diverged_epoch": diverged.epoch, "diverged_step": diverged.step, "error": str(diverged)}
                if diverged
                else {}
            ),
        )
        metrics = record(test={})
        tested = cfg.get("test", True) and bool(best or not diverged)  # never the diverged weights
        if tested:
            _write_metrics(trainer, output_dir, metrics, previous)  # a stop while testing keeps the fit's figures
            metrics = record(test=_test(trainer, model, datamodule, best or None))
    metrics = _write_metrics(trainer, output_dir, metrics, previous)
    if tested and trainer.is_global_zero:
        report_run(cfg, trainer, model, datamodule, metrics)
    if diverged:
        raise diverged
    return metrics


def _record(
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


def _test(trainer: L.Trainer, model: L.LightningModule, datamodule, ckpt_path: str | None) -> dict[str, Any]:
    results = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=True, weights_only=True)
    return {k: _plain(v) for k, v in results[0].items()}


def _restore_best(trainer: L.Trainer, resume: Resume) -> str:
    """The best checkpoint that a resumed run's last.ckpt records, in the folder the run is in now."""
    callback = trainer.checkpoint_callback
    states = resume.checkpoint.get("callbacks")
    state = states.get(callback.state_key) if callback is not None and isinstance(states, dict) else None
    if isinstance(state, dict):
        callback.load_state_dict(state)
    return _best_path(trainer)


def _best_path(trainer: L.Trainer) -> str:
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


def _in_run(path: str, run_dir: Path) -> str:
    """`path` relative to the run folder when it is inside it: the folder can be moved or copied."""
    if not path:
        return ""
    try:
        return Path(path).resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return path


def _write_metrics(trainer: L.Trainer, output_dir: Path, metrics: dict, previous: dict | None) -> dict:
    """Write metrics.json (process 0, atomically), never poorer than the one it replaces; return what it holds."""
    metrics = never_poorer(metrics, previous)
    if trainer.is_global_zero:
        write_atomically(output_dir / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    return metrics


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
    for key, value in model.hparams.items():
        if key != "optimizer":
            params[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return params


def report_run(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule, datamodule, metrics: dict) -> None:
    """Reports of the tested (best) weights in the run folder and TensorBoard, plus the HPARAMS entry."""
    tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    if tensorboard is not None:
        tensorboard.experiment.flush()
    write_reports(
        model,
        datamodule.test_dataloader(),
        datamodule.class_names,
        cfg.output_dir,
        device=trainer.strategy.root_device,
        title=str(metrics["model"]),
        tensorboard_dir=tensorboard.log_dir if tensorboard else None,
        writer=tensorboard.experiment if tensorboard else None,
        step=trainer.global_step,
    )
    if tensorboard is not None:
        final = {k: metrics[k] for k in ("val/acc_best", "test/acc", "test/macro_f1", "train_seconds") if k in metrics}
        tensorboard.log_hyperparams(hparams_for_tensorboard(cfg, model), metrics=final)
        tensorboard.experiment.flush()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | FailedJob | None:
    """Hydra entry point; returns `val/acc_best` for sweepers (None when the run has none: Optuna marks it FAIL).

    In a multirun a failed or interrupted job returns a FailedJob instead of raising, so that the sweep
    reaches its end and reports every job (fmnist.sweeps says why).
    """
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        metrics = train(cfg)
    except SIGTERMException:  # Ctrl-C or SIGTERM: stops a sweep too, once its summary is written
        message = interrupted_message(cfg.resume or cfg.output_dir)
        if multirun:
            return FailedJob("INTERRUPTED", message.removeprefix("interrupted: "))
        raise SystemExit(message) from None
    except FmnistError as error:
        if multirun:
            logging.getLogger("fmnist.train").error(f"job failed: {error}")
            return FailedJob.of(error)
        raise SystemExit(f"error: {error}") from None
    except Exception as error:
        if not multirun:
            raise
        logging.getLogger("fmnist.train").exception("job failed")  # not a user error: its traceback goes to the log
        return FailedJob.of(error)
    value = metrics.get("val/acc_best")
    return value if isinstance(value, float) and math.isfinite(value) else None


if __name__ == "__main__":
    try:
        sys.argv = cli_args(sys.argv)
    except FmnistError as error:
        raise SystemExit(f"error: {error}") from None
    main()
