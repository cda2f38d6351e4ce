"""Building a run's pieces from its config: the process settings, the network, the loggers."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from fmnist.analysis.reports import events_dir
from fmnist.training.console import log
from fmnist.utils.config import override_key
from fmnist.utils.errors import FmnistError

# The splits live in memory as tensors, so loader workers would only add overhead.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# fmnist logs its figures once per epoch (fmnist/models/base.py), so Lightning's per-step interval never matters.
warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
# Lightning 2.6 on torch >= 2.9 warns about its own use of a torch API; nothing for users to do.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
# A resume trains on in its own checkpoints folder (and a new run never reaches a folder with checkpoints
# unless overwrite=true says so): Lightning's warning about it tells nobody anything.
warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")


LIMIT_NOTE = "`Trainer(limit_train_batches=1)` was configured so"  # Lightning's note, said as its counts go


class _StepIsAChunk(logging.Filter):
    def __init__(self, batches_per_step: int):
        super().__init__()
        self.batches_per_step = batches_per_step

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(LIMIT_NOTE):
            record.msg = (
                "trainer.limit_train_batches=1: one training step per epoch, on the fast path a chunk of up to "
                f"{self.batches_per_step} batches (data.batches_per_step)"
            )
            record.args = ()
        return True


@contextlib.contextmanager
def fast_path_notes(batches_per_step: int) -> Iterator[None]:
    """While a Trainer is built: Lightning's note on `trainer.limit_train_batches=1` ("1 batch per epoch")
    says what a step of the fast path is, a chunk of up to `batches_per_step` batches."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where Lightning's notes come from
    note = _StepIsAChunk(batches_per_step)
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


def apply_settings(cfg: DictConfig) -> None:
    """The process-wide settings a run asks for: threads, denormals, TF32, the seed (and a warning where bf16
    would be emulated)."""
    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg.torch_threads)
    torch.set_flush_denormal(bool(cfg.get("flush_denormal")))
    set_tf32(cfg.get("tf32"))
    warn_emulated_bf16(cfg.trainer)
    L.seed_everything(cfg.seed, workers=True)


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


# Keys that say where a run reads and writes or how it prints, not what it is: left out of its TensorBoard name.
UNNAMED_KEYS = (
    "model",
    "seed",
    "output_dir",
    "resume",
    "overwrite",
    "torch_threads",
    "data.root",
    "data.search_dirs",
    "logger",
)
UNNAMED_PREFIXES = ("hydra.", "paths.", "trainer.enable_progress_bar", "logger.")


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


def make_logger(cfg: DictConfig, logger_cfg: DictConfig, resumed: bool):
    """A logger from its config; TensorBoard's events go to `tensorboard/<run_label>/` (a resumed run: the
    folder it already has) so that `tensorboard --logdir` shows each run under what it is; MLflow's run is set
    up by `mlflow_logger`."""
    target = str(logger_cfg.get("_target_", ""))
    if target.endswith("MLFlowLogger"):
        return mlflow_logger(cfg, logger_cfg, resumed)
    if not target.endswith("TensorBoardLogger") or logger_cfg.get("version") not in ("", None):
        return hydra.utils.instantiate(logger_cfg)
    if resumed:
        folder = Path(str(logger_cfg.save_dir)) / str(logger_cfg.name)
        found = events_dir(folder)
        version = found.name if found is not None and found != folder else ""  # "": a run from before the names
    else:
        version = run_label(cfg)
    return hydra.utils.instantiate(logger_cfg, version=version)


RUN_DIR_TAG = "fmnist.run_dir"  # the MLflow tag that ties an MLflow run to its run folder


def mlflow_logger(cfg: DictConfig, logger_cfg: DictConfig, resumed: bool):
    """Lightning's MLFlowLogger, its run made now (a store it cannot reach is one FmnistError before any
    training): named as in TensorBoard, tagged with the run folder, its artifacts beside a local SQLite store.
    A resumed run logs on into the MLflow run that its store holds for its folder, found by that tag."""
    uri = str(logger_cfg.get("tracking_uri"))
    if importlib.util.find_spec("mlflow") is None:
        raise FmnistError("logger=mlflow needs MLflow, which is not installed. Fix: pip install 'fmnist[mlflow]'")
    run_dir = str(Path(cfg.output_dir).resolve())
    settings: dict = {"tags": {**(logger_cfg.get("tags") or {}), RUN_DIR_TAG: run_dir}}
    if logger_cfg.get("run_name") is None:
        settings["run_name"] = run_label(cfg)
    store = local_store(uri)
    if logger_cfg.get("artifact_location") is None and store is not None:
        settings["artifact_location"] = str(store.parent.resolve() / "mlartifacts")
    try:
        if resumed and (run_id := earlier_mlflow_run(uri, str(logger_cfg.get("experiment_name")), run_dir)):
            settings["run_id"] = run_id
        logger = hydra.utils.instantiate(logger_cfg, **settings)
        logger.run_id  # noqa: B018 - connects, and makes the experiment and the run
    except Exception as error:  # noqa: BLE001 - a URL of no store, a server that is down, a database that refuses
        reason = " ".join(str(getattr(error, "__cause__", None) or error).split())[:300] or type(error).__name__
        raise FmnistError(f"logger.mlflow.tracking_uri={uri}: no MLflow run could be made there ({reason})") from None
    return logger


def local_store(uri: str) -> Path | None:
    """The file of a local SQLite tracking store (`sqlite:///outputs/mlflow.db`: relative, `sqlite:////...`:
    absolute); None for any other store."""
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else ""
    return Path(path) if path and not path.startswith(":memory:") else None


def earlier_mlflow_run(uri: str, experiment_name: str, run_dir: str) -> str | None:
    """The id of the newest MLflow run in the store at `uri` tagged with the run folder `run_dir`; None if none."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None or "'" in run_dir:  # a quote could not be written in MLflow's filter string
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None
