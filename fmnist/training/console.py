"""What a person reads while a run trains, on the terminal and in the run's train.log: the plan and an
estimate of the total time, one line per epoch (as Keras prints), the result and the next commands."""

from __future__ import annotations

import logging
import platform
import time

import lightning as L
import torch
from tqdm import tqdm

from fmnist.data.datamodule import epoch_batches
from fmnist.models.summary import keras_param_counts
from fmnist.utils.console import log

TIP = "💡 Tip:"  # Lightning's advertisement for its cloud logger, printed at every Trainer start


class TqdmHandler(logging.StreamHandler):
    """The terminal's log handler (fmnist/conf/hydra/job_logging/fmnist.yaml): lines go through tqdm, so that
    they never break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging's own convention: a failing handler reports, never raises
            self.handleError(record)


class _NoTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP)


def route_lightning_logs() -> None:
    """Lightning's messages through the run's handlers (terminal and train.log), without its tip.

    Lightning gives its loggers a handler of their own and stops them propagating when it is imported
    before logging is configured, so its messages would never reach train.log."""
    root = logging.getLogger()
    if not root.handlers:  # outside a Hydra run: leave Lightning as it is
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    for handler in root.handlers:
        if not any(isinstance(f, _NoTip) for f in handler.filters):
            handler.addFilter(_NoTip())


def to_log_file(message: str, level: int = logging.ERROR) -> None:
    """`message` into the run's log file only (the terminal shows it otherwise, e.g. as the exit message)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the ones that decide the CPU's speed here


def cpu_model() -> str:
    """The CPU's model name and the flags among CPU_FLAGS it has, from /proc/cpuinfo (Linux), e.g.
    'Intel(R) Xeon(R) Processor: avx2 avx512f avx512_bf16 amx_bf16'; the architecture elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            text = file.read(1 << 16)
    except OSError:
        return platform.machine()
    fields = {key.strip(): value for key, _, value in (line.partition(":") for line in text.splitlines())}
    name = " ".join(fields.get("model name", platform.machine()).split())
    flags = set(fields.get("flags", "").split())
    return f"{name}: {' '.join(f for f in CPU_FLAGS if f in flags) or 'none of ' + '/'.join(CPU_FLAGS)}"


def describe_device(trainer: L.Trainer) -> str:
    """A short human description of where training runs, e.g. 'NVIDIA H200' or
    'cpu (Intel(R) Xeon(R) Processor: avx2 avx512f avx512_bf16 amx_bf16, 2 threads)'."""
    device = trainer.strategy.root_device
    count = f"{trainer.world_size}x " if trainer.world_size > 1 else ""
    if device.type == "cuda":
        return count + torch.cuda.get_device_name(device)
    return count + f"{device.type} ({cpu_model()}, {torch.get_num_threads()} threads)"


def duration(seconds: float) -> str:
    """Seconds as a person says them: '45 s', '12 min', '2 h 31 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"


def _optimizer(hparams: dict) -> str:
    spec = hparams.get("optimizer") or {}
    name = str(spec.get("_target_", "?")).rsplit(".", 1)[-1]
    return f"{name} lr {spec['lr']:g}" if "lr" in spec else name


def _epoch_batches(trainer: L.Trainer) -> str:
    """An epoch's length in batches: on the fast path a Lightning step is a chunk of data.batches_per_step."""
    steps = trainer.num_training_batches
    per_step = getattr(trainer.datamodule, "batches_per_step", 1) or 1
    if not isinstance(steps, int):
        return "? batches"
    batches = epoch_batches(trainer.datamodule, steps, trainer.world_size)
    text = f"{batches:,} batch{'es' * (batches != 1)}"
    return text + (f" ({steps:,} step{'s' * (steps != 1)} of up to {per_step})" if per_step > 1 else "")


def _epochs(count: float) -> str:
    text = f"{count:.1f}".removesuffix(".0")
    return f"{text} epoch{'s' * (text != '1')}"


class RunConsole(L.Callback):
    """Before training, the plan; after its first steps, the estimated time left; after each epoch, one line
    with its time and figures, epochs counted from 1. The progress bar's ETA is `time_left` too."""

    ESTIMATE_AFTER = (2, 5.0)  # at least this many steps and seconds of training before the estimate

    def __init__(self, name: str = ""):
        self.name = name
        self._fit_start = self._epoch_start = 0.0
        self._steps = 0
        self._estimated = False

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_start, self._steps, self._estimated = time.perf_counter(), 0, False
        self._epoch_start = self._fit_start  # a run resumed in mid-epoch gets no on_train_epoch_start for it
        if not trainer.is_global_zero:
            return
        limited = trainer.max_epochs and trainer.max_epochs > 0
        epochs = _epochs(trainer.max_epochs) if limited else "unlimited epochs"
        if trainer.current_epoch and limited:  # a resume: what is left
            epochs = f"{_epochs(trainer.max_epochs - trainer.current_epoch)} left of {trainer.max_epochs}"
        batch = getattr(trainer.datamodule, "batch_size", "?")
        params = keras_param_counts(pl_module)["total"]
        start = f", from epoch {trainer.current_epoch + 1}" if trainer.current_epoch else ""
        log.info(
            f"training {self.name or type(pl_module).__name__} ({params:,} parameters): "
            f"{_optimizer(pl_module.hparams)}, batch {batch}, {epochs} of "
            f"{_epoch_batches(trainer)}{start}, on {describe_device(trainer)}"
        )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()

    def steps_left(self, trainer: L.Trainer) -> int | None:
        """Lightning steps the fit has left (those of the epoch under way that are not done, then the other
        epochs'), or None without an epoch count or a known epoch length."""
        per_epoch, epochs = trainer.num_training_batches, trainer.max_epochs
        if not epochs or epochs < 0 or not isinstance(per_epoch, int):
            return None
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # this epoch's, the step ending included
        return max(0, (epochs - trainer.current_epoch) * per_epoch - done)

    def time_left(self, trainer: L.Trainer) -> float | None:
        """The fit's time left in seconds at its pace so far (its time since training started, over its steps):
        the estimate that this console prints once and the progress bar shows as its ETA."""
        left = self.steps_left(trainer)
        if not self._steps or left is None:
            return None
        return (time.perf_counter() - self._fit_start) / self._steps * left

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self._steps += 1
        steps, seconds = self.ESTIMATE_AFTER
        if self._estimated or self._steps < steps or not trainer.is_global_zero:
            return
        if time.perf_counter() - self._fit_start < seconds:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # once: the GPU's clock, not the launch queue's
        self._estimated = True
        left, steps_left = self.time_left(trainer), self.steps_left(trainer)
        # Printed when it still tells something: not when the fit is about to end (a short run).
        if left is None or left < seconds:
            return
        per_epoch = left / steps_left * trainer.num_training_batches
        log.info(
            f"estimated training time left: {duration(left)}, {_epochs(steps_left / trainer.num_training_batches)} "
            f"at ~{duration(per_epoch)} each (at the pace of the first {self._steps} steps)"
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        figures = {k: float(v) for k, v in pl_module.running_train_figures().items()}
        figures.update({k: float(v) for k, v in trainer.callback_metrics.items() if k in ("val/loss", "val/acc")})
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        log.info(
            f"Epoch {trainer.current_epoch + 1}{total} - {time.perf_counter() - self._epoch_start:.1f} s - "
            + " - ".join(f"{k} {v:.4f}" for k, v in figures.items())
        )
