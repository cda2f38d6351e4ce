"""Fitting and testing one run (the logic of `fmnist.train`): Lightning fits, the best checkpoint is tested,
and the run folder gets `checkpoints/`, TensorBoard event files, `model_summary.md`, `metrics.json` and
the reports.
"""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from fmnist.runs.folder import AtomicCheckpointIO, best_path, in_run, restore_best, run_files, run_folder_lock
from fmnist.runs.metrics import FIT_KEYS, metrics_describe, saved_epoch_share, saved_fit, write_metrics
from fmnist.runs.resume import RESTORE_ERRORS, FirstStepDone, Plan, Resume, check_weights, damaged_state, resume_config
from fmnist.training.callbacks import EpochTimer, TrainingDiverged
from fmnist.training.checks import check_config, check_output_dir, check_splits
from fmnist.training.console import RunConsole, log
from fmnist.training.progress import EpochProgressBar
from fmnist.training.report import log_run_params, next_steps, record, report_run
from fmnist.training.setup import apply_settings, build_model, fast_path_notes, make_logger


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

    The run folder is locked meanwhile (`run_folder_lock`). With `resume=RUN_DIR` the run is re-composed
    (fmnist/runs/resume.py): it trains on if it has epochs left, is only tested if its fit is over, and is
    left as it is if it is finished. A diverged run still tests its best checkpoint from before the
    divergence and writes `metrics.json` ("status": "diverged"), then raises TrainingDiverged.
    """
    with contextlib.ExitStack() as stack:
        # 1. the config: checked, or re-composed from the run folder and checked
        resume = None
        if cfg.get("resume"):
            run_files(str(cfg.resume))  # a missing folder is named, not made by the lock
            stack.enter_context(run_folder_lock(str(cfg.resume)))
            resume = resume_config(cfg, check_config)
            if resume.plan is Plan.FINISHED:
                return dict(resume.previous or {})
            cfg = resume.cfg
        else:
            check_config(cfg)
        apply_settings(cfg)
        output_dir = Path(cfg.output_dir)
        check_output_dir(output_dir)
        if resume is None:
            stack.enter_context(run_folder_lock(output_dir))

        # 2. the data, the network, the callbacks, the loggers and the trainer
        model = build_model(cfg.model)
        datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
        datamodule.prepare_data()  # fail on missing data now, with one clear message
        check_splits(cfg, model)
        if resume is not None:
            check_weights(resume, model)
            resume.record_overrides()
        trainer, timer, first_step = _trainer(cfg, output_dir, resume, callbacks or [])
        log_run_params(cfg, trainer, model)
        run = functools.partial(record, cfg, trainer, model, datamodule)

        # 3. fit and test (or, for a resumed run whose fit is over, test only), then metrics.json and the reports
        previous = resume.previous if resume is not None else None
        save = functools.partial(write_metrics, output_dir, previous=previous, writer=trainer.is_global_zero)
        if resume is not None and resume.plan is Plan.FINISH:
            metrics, tested, diverged = (
                _finish(cfg, trainer, model, datamodule, resume, run),
                cfg.get("test", True),
                None,
            )
        else:
            fitted = _fit(cfg, trainer, model, datamodule, resume, run, save, timer, first_step, stops)
            metrics, tested, diverged = fitted
        metrics = save(metrics)
        if tested and trainer.is_global_zero:
            report_run(cfg, trainer, model, datamodule, metrics)
        if trainer.is_global_zero and next_steps_line:
            log.info(next_steps(output_dir, metrics, cfg.get("logger")))
        if diverged:
            raise diverged
        return metrics


def _trainer(cfg: DictConfig, output_dir: Path, resume: Resume | None, extra: list) -> tuple:
    """The Trainer with fmnist's callbacks around the config's and `extra`, and its loggers: (trainer, the epoch
    timer, the resume's first-step flag)."""
    timer, first_step = EpochTimer(), FirstStepDone()  # the timer first: its epoch ends before checkpoints
    callbacks = [timer, *(hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()), *extra]
    callbacks += [first_step, RunConsole(str(cfg.get("name") or ""))]  # the plan, the time estimate, a line per epoch
    if cfg.trainer.get("enable_progress_bar") is not False:
        callbacks.append(EpochProgressBar())  # epochs counted from 1, as Keras and the study do
    loggers = [make_logger(cfg, c, resume is not None) for c in (cfg.get("logger") or {}).values()]
    checkpoint_io = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO(output_dir)]}
    trainer_cfg = {key: value for key, value in cfg.trainer.items() if key != "fast"}  # `fast`: data and model's
    per_step = cfg.data.get("batches_per_step", 1) or 1
    with fast_path_notes(per_step) if per_step > 1 else contextlib.nullcontext():
        trainer = hydra.utils.instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False, **checkpoint_io)
    return trainer, timer, first_step


def _fit(cfg, trainer, model, datamodule, resume: Resume | None, run, save, timer, first_step, stops):
    """Fit (from the run's last.ckpt when resumed), then test the best checkpoint: (metrics, tested, diverged)."""
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
    output_dir = Path(cfg.output_dir)
    best = best_path(trainer)
    run = functools.partial(
        run,
        status="diverged" if diverged else "stopped" if stopped else "completed",
        epochs=trainer.current_epoch,
        steps=trainer.global_step,
        fit={k: _plain(v) for k, v in trainer.callback_metrics.items() if k in FIT_KEYS},
        train_seconds=time.perf_counter() - start,
        epoch_seconds=timer.epoch_seconds,
        best=in_run(best, output_dir),
        **(
            {"diverged_epoch": diverged.epoch, "diverged_step": diverged.step, "error": str(diverged)}
            if diverged
            else {"stopped_by": str(stopped)[:300]}
            if stopped
            else {}
        ),
    )
    metrics = run(test={})
    if stopped is not None:
        save(metrics)
        raise stopped
    tested = cfg.get("test", True) and bool(best or not diverged)  # never the diverged weights
    if tested:
        save(metrics)  # a stop while testing keeps the fit's figures
        metrics = run(test=_test(trainer, model, datamodule, best or None))
    return metrics, tested, diverged


def _finish(cfg, trainer, model, datamodule, resume: Resume, run) -> dict[str, Any]:
    """A resumed run whose fit is over: test its best checkpoint and write metrics.json from what it saved."""
    best = restore_best(trainer, resume.checkpoint)
    epochs = resume.checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    model.epochs_trained = epochs  # the test figures at the run's last epoch in TensorBoard
    test = _test(trainer, model, datamodule, best or str(resume.path)) if cfg.get("test", True) else {}
    previous = resume.previous
    if metrics_describe(previous, resume.checkpoint):
        metrics = {**{k: v for k, v in previous.items() if not k.startswith("test/")}, **test}
        metrics.pop("test_checkpoint", None)
    else:
        fit, epoch_seconds = saved_fit(resume.checkpoint)
        # The session times are lost with the process; the epochs' sum is what the checkpoint keeps.
        metrics = run(
            status="completed",
            epochs=epochs,
            steps=resume.checkpoint["global_step"],
            fit=fit,
            test=test,
            train_seconds=sum(epoch_seconds),
            epoch_seconds=epoch_seconds,
            **saved_epoch_share(resume.checkpoint),
        )
    metrics["best_checkpoint"] = in_run(best, Path(cfg.output_dir))
    return metrics


def _test(trainer: L.Trainer, model: L.LightningModule, datamodule, ckpt_path: str | None) -> dict[str, Any]:
    results = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, weights_only=True)
    return {k: _plain(v) for k, v in results[0].items() if k != "step"}  # "step": TensorBoard's x (the epoch)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) else value
