"""Fitting and testing one run (the logic of `fmnist.train`): Lightning fits, the best checkpoint is tested,
and the run folder gets `checkpoints/`, TensorBoard event files, `model_summary.md`, `metrics.json` and
the reports.
"""

from __future__ import annotations

import contextlib
import functools
import shlex
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig
from torch.utils.tensorboard.summary import hparams as hparams_summary

from fmnist.analysis.reports import events_dir, write_reports
from fmnist.analysis.runs import partial_epochs
from fmnist.models.summary import keras_param_counts
from fmnist.training.callbacks import FIT_KEYS, EpochTimer, TrainingDiverged, epoch_share
from fmnist.training.checks import check_config, check_output_dir, check_splits
from fmnist.training.console import RunConsole, describe_device, log
from fmnist.training.progress import EpochProgressBar
from fmnist.training.resume import (
    RESTORE_ERRORS,
    FirstStepDone,
    Resume,
    check_weights,
    damaged_state,
    hydra_value,
    metrics_describe,
    never_poorer,
    override_key,
    resume_config,
    run_files,
    saved_epoch_share,
    saved_fit,
)
from fmnist.training.run_folder import AtomicCheckpointIO, run_folder_lock
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import write_json

# The splits live in memory as tensors, so loader workers would only add overhead.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# fmnist logs its figures once per epoch (fmnist/models/base.py), so Lightning's per-step interval never matters.
warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
# Lightning 2.6 on torch >= 2.9 warns about its own use of a torch API; nothing for users to do.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) else value


def train(
    cfg: DictConfig,
    callbacks: list[L.Callback] | None = None,
    stops: tuple[type[BaseException], ...] = (),
    next_steps_line: bool = True,
) -> dict[str, Any]:
    """Fit, test the best checkpoint, write `metrics.json`; return the metrics.

    `callbacks` join the config's (objects that no config can describe: a search's pruning callback);
    an exception of a type in `stops` raised during the fit (a pruned trial) ends it early on purpose:
    `metrics.json` says `"status": "stopped"` with the fit's figures so far, nothing is tested, and the
    exception goes on up. `next_steps_line=False` leaves out the closing lines (a search prints its own).

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
        set_tf32(cfg.get("tf32"))
        warn_emulated_bf16(cfg.trainer)
        L.seed_everything(cfg.seed, workers=True)
        output_dir = Path(cfg.output_dir)
        check_output_dir(output_dir)
        if resume is None:
            stack.enter_context(run_folder_lock(output_dir))
        return _fit_and_test(cfg, output_dir, resume, callbacks or [], stops, next_steps_line)


def set_tf32(tf32: bool | None) -> None:
    """CUDA float32 arithmetic: true runs convolutions and matmuls in TF32 (TensorFlow's default on Ampere
    and newer GPUs), false both in full float32, null torch's defaults (TF32 convolutions, float32 matmuls;
    set again, for the runs after another in one process). The flags do nothing on the CPU."""
    torch.backends.cudnn.allow_tf32 = tf32 is not False
    torch.backends.cuda.matmul.allow_tf32 = tf32 is True


def warn_emulated_bf16(trainer_cfg: DictConfig) -> None:
    """One warning line when bf16 autocast would run on a CPU without native bf16 (no AVX512-BF16 or AMX),
    where it is emulated: slower than float32, not faster."""
    bf16 = str(trainer_cfg.get("precision")).startswith("bf16")
    if bf16 and str(trainer_cfg.get("accelerator")) == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning(
            f"warning: trainer.precision={trainer_cfg.precision}: this CPU has no native bf16 (AVX512-BF16 or AMX), so "
            "it is emulated and slower than float32; trainer=cpu_fast trains faster here"
        )


def build_model(model_cfg: DictConfig) -> L.LightningModule:
    """The network of `model_cfg`; a setting its constructor rejects (a WRN depth that is not 6n + 4) is one
    FmnistError naming the model's message."""
    try:
        return hydra.utils.instantiate(model_cfg)
    except InstantiationException as error:
        if isinstance(error.__cause__, ValueError):
            raise FmnistError(f"model: {error.__cause__}") from None
        raise


def _fit_and_test(
    cfg: DictConfig, output_dir: Path, resume: Resume | None, extra: list, stops: tuple, next_steps_line: bool
) -> dict[str, Any]:
    model = build_model(cfg.model)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()  # fail on missing data now, with one clear message
    check_splits(cfg, model)
    if resume is not None:
        check_weights(resume, model)
        resume.record_overrides()
    timer = EpochTimer()
    # The timer goes first so that its epoch ends before checkpoints are written.
    callbacks = [timer] + [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()] + extra
    first_step = FirstStepDone()
    callbacks.append(first_step)
    callbacks.append(RunConsole(str(cfg.get("name") or "")))  # the plan, the time estimate, a line per epoch
    if cfg.trainer.get("enable_progress_bar") is not False:
        callbacks.append(EpochProgressBar())  # epochs counted from 1, as Keras and the study do
    loggers = [_logger(cfg, c, resume) for c in (cfg.get("logger") or {}).values()]
    checkpoint_io = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO(output_dir)]}
    trainer_cfg = {key: value for key, value in cfg.trainer.items() if key != "fast"}  # `fast`: read by data, model
    trainer: L.Trainer = hydra.utils.instantiate(
        trainer_cfg, callbacks=callbacks, logger=loggers or False, **checkpoint_io
    )
    previous = resume.previous if resume is not None else None
    record = functools.partial(_record, cfg, trainer, model, datamodule)

    if resume is not None and resume.plan == "finish":  # the fit is over: test, with what the run saved
        best = _restore_best(trainer, resume)
        tested = cfg.get("test", True)
        epochs = resume.checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
        model.epochs_trained = epochs  # the test figures at the run's last epoch in TensorBoard
        test = _test(trainer, model, datamodule, best or str(resume.path)) if tested else {}
        if metrics_describe(previous, resume.checkpoint):
            metrics = {**{k: v for k, v in previous.items() if not k.startswith("test/")}, **test}
            metrics.pop("test_checkpoint", None)
        else:
            fit, epoch_seconds = saved_fit(resume)
            # The session times are lost with the process; the epochs' sum is what the checkpoint keeps.
            metrics = record(
                status="completed",
                epochs=epochs,
                steps=resume.checkpoint["global_step"],
                fit=fit,
                test=test,
                train_seconds=sum(epoch_seconds),
                epoch_seconds=epoch_seconds,
                **saved_epoch_share(resume),
            )
        metrics["best_checkpoint"] = _in_run(best, output_dir)
        diverged = None
    else:
        start = time.perf_counter()
        diverged: TrainingDiverged | None = None
        stopped: BaseException | None = None
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=resume.path if resume else None, weights_only=True)
        except RESTORE_ERRORS as error:  # a resume's first step not done: the state last.ckpt restored is bad
            if resume is None or first_step.done:
                raise
            raise damaged_state(resume, error) from None
        except TrainingDiverged as error:
            diverged = error
        except stops as error:
            stopped = error
        fit = {k: _plain(v) for k, v in trainer.callback_metrics.items() if k in FIT_KEYS}
        best = _best_path(trainer)
        record = functools.partial(
            record,
            status="diverged" if diverged else "stopped" if stopped else "completed",
            epochs=trainer.current_epoch,
            steps=trainer.global_step,
            fit=fit,
            train_seconds=time.perf_counter() - start,
            epoch_seconds=timer.epoch_seconds,
            best=_in_run(best, output_dir),
            **(
                {"diverged_epoch": diverged.epoch, "diverged_step": diverged.step, "error": str(diverged)}
                if diverged
                else {"stopped_by": str(stopped)[:300]}
                if stopped
                else {}
            ),
        )
        metrics = record(test={})
        if stopped is not None:
            _write_metrics(trainer, output_dir, metrics, previous)
            raise stopped
        tested = cfg.get("test", True) and bool(best or not diverged)  # never the diverged weights
        if tested:
            _write_metrics(trainer, output_dir, metrics, previous)  # a stop while testing keeps the fit's figures
            metrics = record(test=_test(trainer, model, datamodule, best or None))
    metrics = _write_metrics(trainer, output_dir, metrics, previous)
    if tested and trainer.is_global_zero:
        report_run(cfg, trainer, model, datamodule, metrics)
    if trainer.is_global_zero and next_steps_line:
        log.info(next_steps(output_dir, metrics))
    if diverged:
        raise diverged
    return metrics


# Keys that say where a run reads and writes or how it prints, not what it is: left out of its TensorBoard name.
UNNAMED_KEYS = ("model", "seed", "output_dir", "resume", "overwrite", "torch_threads", "data.root", "data.search_dirs")
UNNAMED_PREFIXES = ("hydra.", "paths.", "trainer.enable_progress_bar")


def run_label(cfg: DictConfig) -> str:
    """What the run is, as TensorBoard's run name: `<model>,seed=<seed>` and the run's other overrides
    in Hydra's `override_dirname` form (sorted, `key=value` joined by commas), e.g.
    `rnn,seed=1,model.optimizer.lr=0.1`. A `/` in a value becomes `_`: the name is one folder."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    named = sorted(
        o.lstrip("+~")
        for o in overrides
        if override_key(o) not in UNNAMED_KEYS and not override_key(o).startswith(UNNAMED_PREFIXES)
    )
    label = ",".join([f"{cfg.get('name') or 'run'}", f"seed={cfg.seed}", *named]).replace("/", "_")
    return label[:200]  # a folder name stays well under the file system's 255 bytes


def _logger(cfg: DictConfig, logger_cfg: DictConfig, resume: Resume | None):
    """A logger from its config; TensorBoard's events go to `tensorboard/<run_label>/` (a resumed run: the
    folder it already has) so that `tensorboard --logdir` shows each run under what it is."""
    target = str(logger_cfg.get("_target_", ""))
    if not target.endswith("TensorBoardLogger") or logger_cfg.get("version") not in ("", None):
        return hydra.utils.instantiate(logger_cfg)
    if resume is not None:
        folder = Path(str(logger_cfg.save_dir)) / str(logger_cfg.name)
        found = events_dir(folder)
        version = found.name if found is not None and found != folder else ""  # "": a run from before the names
    else:
        version = run_label(cfg)
    return hydra.utils.instantiate(logger_cfg, version=version)


def next_steps(run_dir: Path, metrics: dict) -> str:
    """Where the run is, what it reached, and the commands that look at it, with its folder filled in."""
    lines = [f"run folder: {shlex.quote(str(run_dir))}"]
    if isinstance(metrics.get("test/acc"), float):
        tta = f", {metrics['test/acc_tta']:.4f} with flip TTA" if isinstance(metrics.get("test/acc_tta"), float) else ""
        best = metrics["best_checkpoint"]
        lines.append(f"test accuracy: {metrics['test/acc']:.4f}{tta} (best checkpoint on validation: {best})")
    checkpoint = hydra_value(str(run_dir / (metrics.get("best_checkpoint") or "checkpoints/last.ckpt")))
    lines += [
        "next:",
        f"  tensorboard --logdir {shlex.quote(str(run_dir / 'tensorboard'))}",
        f"  python -m fmnist.evaluate {shlex.quote('ckpt_path=' + checkpoint)}",
        f"  python -m fmnist.predict {shlex.quote('ckpt_path=' + checkpoint)} inputs=YOUR_IMAGES",
    ]
    return "\n".join(lines)


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


def _test(trainer: L.Trainer, model: L.LightningModule, datamodule, ckpt_path: str | None) -> dict[str, Any]:
    results = trainer.test(
        model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, weights_only=True
    )  # fmnist reports the test itself
    return {k: _plain(v) for k, v in results[0].items() if k != "step"}  # "step": TensorBoard's x (the epoch)


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
        write_json(output_dir / "metrics.json", metrics)
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
    epochs = int(metrics.get("epochs") or trainer.current_epoch)
    write_reports(
        model,
        datamodule.test_dataloader(),
        datamodule.class_names,
        cfg.output_dir,
        device=trainer.strategy.root_device,
        title=str(metrics["model"]) + (f" ({part})" if (part := partial_epochs(metrics)) else ""),
        tensorboard_dir=tensorboard.log_dir if tensorboard else None,
        writer=tensorboard.experiment if tensorboard else None,
        step=epochs,  # the report images at the run's last epoch, like its test figures
    )
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
