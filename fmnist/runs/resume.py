"""Interrupting and resuming training.

Ctrl-C or SIGTERM during training ends the current step, writes `checkpoints/last.ckpt` and stops;
`python -m fmnist.train resume=RUN_DIR` continues that run in its folder, with its config, from
that checkpoint. With the training loader's position (`fmnist.data.datamodule.ResumableLoader`), the running
metrics (`FashionClassifier.on_save_checkpoint`) and the random state (`RandomState`) in the
checkpoint, a run resumed in mid-epoch computes what the uninterrupted run computes.

A resume never makes a run poorer: a finished run is left as it is, a run stopped while testing only
finishes its test, and no key of its metrics.json disappears (`never_poorer`).
"""

from __future__ import annotations

import enum
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf, open_dict

from fmnist.data.idx import RAW_FILES, raw_folder
from fmnist.runs.folder import run_files
from fmnist.runs.metrics import MODEL_KEY, dig, is_count, metrics_describe, read_metrics
from fmnist.utils.config import compose_run, hydra_value, override_key
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import read_yaml, write_text

# What a resume may change: how long it goes on and how it runs, never what it computes.
RESUMABLE_KEYS = (
    "trainer.max_epochs",
    "trainer.max_time",
    "trainer.enable_progress_bar",
    "torch_threads",
    "test",
    "data.root",  # where the same data is: this command's to say, never the run folder's
    "logger.mlflow.tracking_uri",  # the MLflow store the run logs to: likewise (`store_from_command_line`)
)


class Plan(enum.Enum):
    """What is left of a run: train on, finish (the fit is over: test and write metrics.json from what the run
    saved), or nothing (finished)."""

    FIT = "fit"
    FINISH = "finish"
    FINISHED = "finished"


def cli_args(argv: list[str]) -> list[str]:
    """The command line with `resume=RUN_DIR` checked, before Hydra makes any folder, and Hydra told
    to log into RUN_DIR (`train.log`) without rewriting the run's `.hydra/`."""
    given = [arg for arg in argv[1:] if arg.startswith("resume=")]
    if not given:
        return argv
    run_dir = OverridesParser.create().parse_overrides(given[-1:])[0].value()
    if run_dir is None:
        return argv
    try:  # as the run will see it: OmegaConf turns an escaped \${ into ${
        run_dir = OmegaConf.create({"resume": run_dir}).resume
    except Exception as error:  # noqa: BLE001 - e.g. an interpolation that names nothing
        raise FmnistError(f"resume={run_dir} cannot be read: {str(error).splitlines()[0]}") from None
    run_files(str(run_dir))
    if "${" in str(run_dir):  # Hydra would read it as an interpolation in its own paths (its job log's)
        raise FmnistError(
            f"resume={run_dir}: Hydra cannot run in a folder whose name contains '${{'. Fix: rename the folder"
        )
    return [*argv, "hydra.run.dir=${resume}", "hydra.output_subdir=null"]


@dataclass
class Resume:
    """A run to resume: its config, its last.ckpt (`path`, read into `checkpoint`), its metrics.json
    (`previous`, None when absent or unreadable) and what is left to do (`plan`)."""

    cfg: DictConfig
    path: Path
    checkpoint: dict
    previous: dict | None
    plan: Plan
    _record: Callable[[], None] = lambda: None

    def record_overrides(self) -> None:
        """Record this command's overrides in the run's `.hydra/`: once the run is known to go on."""
        self._record()


def resume_config(cfg: DictConfig, check: Callable[[DictConfig], None]) -> Resume:
    """The run in `cfg.resume`, re-composed: the package's own fmnist/conf/ with the overrides the run recorded
    (checked by `recorded_overrides`) and this command's, passed through `check` as a new run's config is; its
    `last.ckpt` and what is left to do. The run's saved `config.yaml` is only compared (`compare_saved`), never used.

    Command-line overrides other than RESUMABLE_KEYS are refused; the allowed ones are applied and,
    by `Resume.record_overrides` once the run goes on, recorded in the run's `.hydra/overrides.yaml` (and
    `config.yaml`), so that a later resume keeps them. A finished run is reported in one line and left as it is.
    """
    run = Path(cfg.resume)
    config_file, checkpoint_path = run_files(run)
    overrides = [o for o in HydraConfig.get().overrides.task if override_key(o) != "resume"]
    refused = [o for o in overrides if override_key(o) not in RESUMABLE_KEYS]
    if refused:
        raise FmnistError(
            f"resume={run} continues that run with its own config: {' '.join(refused)} "
            f"cannot change on resume (only {', '.join(RESUMABLE_KEYS)} can)"
        )
    overrides_file = config_file.with_name("overrides.yaml")
    recorded = recorded_overrides(overrides_file)
    store_from_command_line(run, recorded, overrides)
    composed, resolved = recompose([*recorded, *overrides], run)
    compare_saved(config_file, composed, resolved, skip=[override_key(o) for o in overrides])
    root = resolved.data.root
    roots = [[o for o in given if override_key(o) == "data.root"] for given in (recorded, overrides)]
    from_file = bool(roots[0]) and not roots[1]  # the command line's data.root wins
    if from_file and not all((raw_folder(root) / name).is_file() for name in RAW_FILES):
        raise FmnistError(  # the file may say where the data is read from, never where it is unpacked to
            f"resume={run}: the run's data.root={str(root)[:200]!r} does not hold the four Fashion-MNIST files, and "
            "a resume never unpacks data where a run folder's file says. Fix: give it on the command line, "
            f"`resume=... data.root={hydra_value(str(root), 'data.root')}`"
        )
    if OmegaConf.select(resolved, "model.lr_schedule", default=False) is True and any(
        override_key(o) == "trainer.max_epochs" for o in overrides
    ):
        raise FmnistError(
            f"resume={run} has a learning-rate schedule laid out for its own trainer.max_epochs: "
            "trainer.max_epochs cannot change on resume for it (train a new run instead)"
        )
    check(resolved)
    checkpoint = read_checkpoint(checkpoint_path, run)
    previous = read_metrics(run / "metrics.json")
    plan, done = resume_plan(resolved, checkpoint, previous, {override_key(o) for o in overrides})
    if plan is Plan.FINISHED:
        rank_zero_info(
            f"resume={run}: the run is finished ({done}) and its metrics.json is complete; nothing "
            "was changed. To train it further, raise trainer.max_epochs"
        )
        return Resume(resolved, checkpoint_path, checkpoint, previous, plan)

    def record() -> None:
        if not overrides:
            return
        write_text(config_file, OmegaConf.to_yaml(composed))
        write_text(overrides_file, yaml.safe_dump([*read_yaml(overrides_file), *overrides]))

    rank_zero_info(
        f"resuming {run} from {checkpoint_path}"
        + (f" with {' '.join(overrides)}" if overrides else "")
        + (f" to finish it ({done}): testing and writing metrics.json" if plan is Plan.FINISH else "")
    )
    return Resume(resolved, checkpoint_path, checkpoint, previous, plan, record)


def store_from_command_line(run: Path, recorded: list[str], overrides: list[str]) -> None:
    """Refuse a run that was made with a `...tracking_uri=` override unless this command gives it too (`++`: the
    command line's config has no MLflow logger to override): a resume logs to an MLflow store that its command
    line names, never to one a run folder's file names."""
    given = {override_key(o) for o in overrides}
    for text in recorded:
        key = override_key(text)
        if key.endswith(".tracking_uri") and key not in given:
            raise FmnistError(
                f"resume={run}: the run logged to MLflow at {text}, and a resume never logs where a run folder's file "
                f"says. Fix: give it on the command line, `resume=... ++{text.lstrip('+')}`"
            )


def read_checkpoint(path: Path, run: Path) -> dict:
    """The contents of a run's last.ckpt (`torch.load(weights_only=True)`), or one FmnistError naming it."""
    fix = "Fix: copy one of the run's checkpoints/epoch_NNN.ckpt over it to resume from the end of that epoch"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only=True met something other than plain values
        lines = str(error).strip().splitlines() or [type(error).__name__]
        code = next((line for line in lines if "Unsupported global" in line), None)
        if code is not None:
            raise FmnistError(
                f"resume={run}: {path} is refused: it carries pickled objects or code, which fmnist "
                f"never loads ({code[:200]}). {fix}"
            ) from None
        reason = next((line for line in lines if "WeightsUnpickler" in line), lines[0])[:200]
        raise FmnistError(f"resume={run}: {path} is damaged ({reason}). {fix}") from None
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise FmnistError(f"resume={run}: {path} is damaged ({reason}). {fix}") from None
    if not (
        isinstance(checkpoint, dict)
        and isinstance(checkpoint.get("state_dict"), dict)
        and is_count(checkpoint.get("global_step"))
        and is_count(dig(checkpoint, "loops", "fit_loop", "epoch_progress", "current", "processed"))
    ):
        raise FmnistError(
            f"resume={run}: {path} is not a training checkpoint of fmnist (it lacks Lightning's "
            f"weights or loop state). {fix}"
        )
    return checkpoint


class FirstStepDone(L.Callback):
    """Whether a resumed fit got through its first training step: until then, any failure comes from the
    training state that last.ckpt restored (`damaged_state`)."""

    done = False

    def on_train_batch_end(self, *args) -> None:
        self.done = True


RESTORE_ERRORS = (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError)


def damaged_state(resume: Resume, error: BaseException) -> FmnistError:
    """One line for a last.ckpt whose training state (callbacks, optimizer, loops) could not be restored."""
    reason = " ".join(str(error).split())[:200] or type(error).__name__
    return FmnistError(
        f"resume={resume.cfg.output_dir}: {resume.path} holds a training state that cannot be restored "
        f"({type(error).__name__}: {reason}). Fix: copy one of the run's checkpoints/epoch_NNN.ckpt over it "
        "to resume from the end of that epoch"
    )


def check_weights(resume: Resume, model: L.LightningModule) -> None:
    """Refuse a last.ckpt whose weights are not those of the run's model (another class, another size)."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {
        key: tuple(value.shape)
        for key, value in resume.checkpoint["state_dict"].items()
        if isinstance(value, torch.Tensor)
    }
    if found != expected:
        saved = resume.checkpoint.get(MODEL_KEY)
        holds = f" (it holds {str(saved).rsplit('.', 1)[-1][:60]} weights)" if isinstance(saved, str) else ""
        raise FmnistError(
            f"resume={resume.cfg.output_dir}: {resume.path} does not match the run's "
            f"{type(model).__name__}{holds}. Fix: copy one of the run's own "
            "checkpoints/epoch_NNN.ckpt over it to resume from the end of that epoch"
        )


def _max_epochs(cfg: DictConfig) -> int:
    """Lightning's epoch limit for the trainer config (-1: none)."""
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if max_epochs is None:  # Lightning's default
        return 1000 if OmegaConf.select(cfg, "trainer.max_steps", default=-1) in (None, -1) else -1
    return max_epochs


def resume_plan(cfg: DictConfig, checkpoint: dict, previous: dict | None, given: set[str]) -> tuple[Plan, str]:
    """What is left of a run and, when its fit is over, how it ended.

    The fit is over when last.ckpt has reached trainer.max_epochs (Lightning's own test), or when
    metrics.json, written when a fit ends, describes last.ckpt (early stopping, max_time) or a
    divergence; it goes on anyway when this command raises trainer.max_epochs, or sets trainer.max_time for a run
    with epochs left (a finished run is never fitted again: its train_seconds stay).
    """
    epochs = dig(checkpoint, "loops", "fit_loop", "epoch_progress", "current", "processed")
    limit = _max_epochs(cfg)
    reached = limit != -1 and epochs >= limit
    if not reached and ("trainer.max_epochs" in given or "trainer.max_time" in given):
        return Plan.FIT, ""
    describes = metrics_describe(previous, checkpoint)
    if not (reached or describes):
        return Plan.FIT, ""
    status = previous.get("status") if describes else None
    done = (
        f"{status} at epoch {previous.get('diverged_epoch')}"
        if status == "diverged"
        else f"trained {epochs} epoch{'s' * (epochs != 1)} of trainer.max_epochs={limit}"
    )
    tested = describes and "test/acc" in previous and "test_checkpoint" not in previous
    if not describes or (cfg.get("test", True) and not tested):
        return Plan.FINISH, done
    return Plan.FINISHED, done


# A recorded override never says where files go or which class is built: the resume sets the folders itself.
DROPPED = ("output_dir", "resume", "overwrite")  # set by the resume (a search's trials record output_dir)
PATH_NAMES = ("dirpath", "filename", "save_dir", "default_root_dir", "root_dir", "log_dir", "output_dir", "sub_dir")
# A logger's place: its folder's name and version, MLflow's artifact folder, experiment and run. MLflow's store
# (`...tracking_uri=`) is read only when the command line says it too (`store_from_command_line`), and never
# from inside a dict value.
LOGGER_PLACES = ("name", "version", "prefix", "artifact_location", "experiment_name", "run_id")


def recorded_overrides(path: Path) -> list[str]:
    """The overrides a run was made (and resumed) with, from its `.hydra/overrides.yaml`: a list of plain
    overrides, parsed by Hydra's own parser. Those the resume sets itself (DROPPED, `hydra.*`) are left out; one
    that names a `_target_`, reads an interpolation or resolver, sets where files go (PATH_NAMES, a logger's
    place: LOGGER_PLACES) or sweeps is refused with one FmnistError naming it."""

    def refuse(text: Any, why: str) -> FmnistError:
        return FmnistError(
            f"{path} is refused: {str(text)[:200]!r} {why}. Fix: start a new run, or restore the file as "
            "fmnist.train wrote it"
        )

    if not path.is_file():
        raise FmnistError(
            f"resume={path.parent.parent}: not a run folder that fmnist can resume (it has no {path.name}, "
            "which holds the run's overrides)"
        )
    recorded = read_yaml(path, max_bytes=64 << 10)
    if recorded is None:
        recorded = []
    if not isinstance(recorded, list) or not all(isinstance(text, str) for text in recorded):
        raise refuse(recorded, "is not a list of overrides")
    kept = []
    for text in recorded:
        if "${" in text:
            raise refuse(text, "reads an interpolation or a resolver")
        try:
            (override,) = OverridesParser.create().parse_overrides([text])
        except Exception as error:  # noqa: BLE001 - Hydra's grammar refuses it
            raise refuse(text, f"is not an override ({' '.join(str(error).split())[:120]})") from None
        key = override.key_or_group
        parts = key.split(".")
        if key in DROPPED or parts[0] == "hydra":
            continue
        if override.is_sweep_override():
            raise refuse(text, "is a sweep, not one run's value")
        for named in [parts, *(parts + below for below in _nested_keys(override.value()))]:  # {a: {b: ...}} too
            if any(part.startswith("_") and part.endswith("_") for part in named):  # _target_, _args_, ...
                raise refuse(text, "names a class or a Hydra directive")
            store_in_dict = named[-1] == "tracking_uri" and len(named) > len(parts)
            if named[-1] in PATH_NAMES or (named[0] == "logger" and named[-1] in LOGGER_PLACES) or store_in_dict:
                raise refuse(text, "sets where files go, which a resume never takes from a file")
        kept.append(text)
    return kept


def _nested_keys(value: Any) -> list[list[str]]:
    """The key paths inside an override's value (a dict, or a list of dicts), e.g. [["a"], ["a", "b"]] for
    {a: {b: 1}}: a recorded `logger.mlflow={tracking_uri: ...}` is checked as `logger.mlflow.tracking_uri` is."""
    if isinstance(value, dict):
        return [[str(key), *below] for key, item in value.items() for below in [[], *_nested_keys(item)]]
    if isinstance(value, list):
        return [below for item in value for below in _nested_keys(item)]
    return []


def recompose(overrides: list[str], run: Path) -> tuple[DictConfig, DictConfig]:
    """The package's fmnist/conf/ composed with `overrides` for the run folder `run`: (as composed, resolved), with
    `${hydra:...}` read from that composition, Hydra's global state left as it was."""
    composed, hydra = compose_run(overrides)
    with open_dict(composed):
        composed.output_dir = str(run)  # wherever the folder is now
        composed.resume = None
    resolved = composed.copy()
    instance = HydraConfig.instance()
    current = instance.cfg
    instance.cfg = OmegaConf.create({"hydra": OmegaConf.to_container(hydra, resolve=False)})
    try:
        with open_dict(instance.cfg):
            instance.cfg.hydra.runtime.output_dir = str(run)
        OmegaConf.resolve(resolved)
    except Exception as error:  # noqa: BLE001 - e.g. a recorded override of a key fmnist/conf/ no longer has
        reason = " ".join(str(error).split())[:300]
        raise FmnistError(f"resume={run}: its overrides no longer compose ({reason})") from None
    finally:
        instance.cfg = current
    return composed, resolved


# Where classes lived before fmnist/ was laid out in sub-packages, as the configs of earlier runs name them.
MOVED_TARGETS = {
    "fmnist.callbacks.KerasModelSummary": "fmnist.training.callbacks.KerasModelSummary",
    "fmnist.callbacks.RunCheckpoint": "fmnist.runs.folder.RunCheckpoint",
    "fmnist.callbacks.StopOnNonFiniteLoss": "fmnist.training.callbacks.StopOnNonFiniteLoss",
    "fmnist.resume.SaveOnInterrupt": "fmnist.training.callbacks.SaveOnInterrupt",
    "fmnist.resume.RandomState": "fmnist.training.callbacks.RandomState",
    "fmnist.optim.KerasRMSprop": "fmnist.models.optim.KerasRMSprop",
    "fmnist.optim.KerasAdam": "fmnist.models.optim.KerasAdam",
    "lightning.pytorch.callbacks.ModelCheckpoint": "fmnist.runs.folder.RunCheckpoint",
    "fmnist.training.run_folder.RunCheckpoint": "fmnist.runs.folder.RunCheckpoint",
}
NOT_COMPARED = ("output_dir", "resume")


def compare_saved(config_file: Path, composed: DictConfig, resolved: DictConfig, skip: list[str]) -> None:
    """Refuse, with one FmnistError naming the key, a run whose saved `config.yaml` holds a value that differs
    from what the re-composition gives (as composed, or resolved): a file edited since, or a run of an fmnist
    whose fmnist/conf/ computed something else. Keys only one side has are a version's additions and pass; `skip` are
    this command's overrides. The file is read as plain data (no aliases) and never resolved."""
    saved = read_yaml(config_file)
    if not isinstance(saved, dict):
        raise FmnistError(f"{config_file} is refused: it is not a run's config (a mapping). Fix: start a new run")
    plain = OmegaConf.to_container(composed, resolve=False)
    final = OmegaConf.to_container(resolved, resolve=False)

    def walk(old: Any, new: Any, done: Any, where: str) -> None:
        if where in skip or where in NOT_COMPARED:
            return
        if isinstance(old, dict) and isinstance(new, dict):
            for key in [key for key in old if key in new]:
                below = done.get(key) if isinstance(done, dict) else None
                walk(old[key], new[key], below, f"{where}.{key}" if where else str(key))
            return
        if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
            for index, (a, b) in enumerate(zip(old, new, strict=True)):
                walk(a, b, done[index] if isinstance(done, list) and index < len(done) else None, f"{where}[{index}]")
            return
        if where.endswith("_target_") and isinstance(old, str):
            old = MOVED_TARGETS.get(old, old)
        if old != new and old != done:
            raise FmnistError(
                f"{config_file} is refused: {where}={str(old)[:120]!r} differs from what fmnist/conf/ gives for "
                f"the run's overrides ({str(new)[:120]!r}); a resume re-composes the run and uses nothing "
                "from that file. Fix: restore the file, resume with the fmnist version that made the run, or "
                "start a new run"
            )

    walk(saved, plain, final, "")
