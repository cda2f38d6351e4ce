"""Finding training runs and aggregating them over seeds.

A run is a folder that `fmnist.train` made: one whose `.hydra/config.yaml` is a training config (it has
`model` and `trainer` sections), or, where `.hydra/` was not copied along, one whose `metrics.json` has
the training keys `model` and `epochs`. Folders inside a run are not runs: the `metrics.json` that
`fmnist.evaluate` writes into `checkpoints/eval/` or `eval-val/` is a report of that run, not another.

Each run found gets a `state` and a one-line `note`: `completed` (trained and tested: the only ones
aggregated), `untested` (test=false), `diverged`, `failed` and `interrupted` (sweep jobs, from their
`job_status.json`, or a `last.ckpt` without `metrics.json`), `unfinished` (no result yet) and
`unreadable` (a damaged `metrics.json`). Reading a run never fails: a damaged file is that run's state.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fmnist.runs.folder import resume_command
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import read_bytes, read_yaml

TRAINING_KEYS = ("model", "epochs")  # in the metrics.json of fmnist.train, not in fmnist.evaluate's
MAX_JSON_BYTES = 16 << 20  # a run's metrics.json or job_status.json is a few KB


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_json(data: bytes) -> tuple[Any, str]:
    """(the parsed JSON, "") or (None, why it is not JSON)."""
    try:
        return json.loads(data), ""
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except json.JSONDecodeError as error:
        return None, f"is not valid JSON ({error.msg}, line {error.lineno}): truncated or edited"
    except RecursionError:
        return None, "is not valid JSON (nested too deeply)"
    except ValueError as error:  # e.g. an integer of over 4,300 digits
        return None, f"is not valid JSON ({' '.join(str(error).split(':')[0].split())[:80]})"


def read_json(path: Path) -> tuple[Any, str]:
    """(the parsed file, "") or (None, why it could not be read); at most MAX_JSON_BYTES are read."""
    try:
        data = read_bytes(path, MAX_JSON_BYTES)
    except FileNotFoundError:
        return None, "missing"
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error})"
    except ValueError as error:
        return None, str(error)
    return parse_json(data)


def _read_yaml(path: Path) -> Any:
    try:
        return read_yaml(path)  # plain values only, within 1 MiB, no aliases: nothing in the file is run
    except FmnistError:
        return None


def _short(value: Any) -> str:
    """A value of a damaged file in a note: one line, at most 60 characters."""
    return " ".join(str(value).split())[:60]


def _training_config(folder: Path) -> dict | None:
    config = _read_yaml(folder / ".hydra" / "config.yaml") if (folder / ".hydra" / "config.yaml").is_file() else None
    return config if isinstance(config, dict) and "model" in config and "trainer" in config else None


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The keys that aggregate, recipe and the reports read, and what each must be (absent keys are not checked here).
KEY_TYPES = {
    "model": (lambda v: isinstance(v, str), "a string"),
    "epochs": (_integer, "an integer"),
    "seed": (lambda v: v is None or _integer(v), "an integer or null"),
    "optimizer": (lambda v: v is None or isinstance(v, dict), "a mapping"),
    "batch_size": (lambda v: v is None or _integer(v), "an integer"),
    "params_total_keras": (lambda v: v is None or _integer(v), "an integer"),
    "device": (lambda v: isinstance(v, str), "a string"),
    "status": (lambda v: isinstance(v, str), "a string"),
}
NUMBER_KEYS = ("test/macro_f1", "train_seconds")  # of a completed run, and every test/f1/<class>


def _wrong_type(metrics: dict, numbers: bool = False) -> str:
    """'model=["x"] (must be a string)' for the first key of a wrong type, or ''. With `numbers`, also the
    figures that a comparison averages (only a completed run's are: a diverged run's may be NaN)."""
    checks = dict(KEY_TYPES)
    if numbers:
        for key in [*NUMBER_KEYS, *(k for k in metrics if isinstance(k, str) and k.startswith("test/f1/"))]:
            checks[key] = (lambda v: v is None or _number(v), "a finite number")
    for key, (ok, what) in checks.items():
        if key in metrics and not ok(metrics[key]):
            return f"{key}={json.dumps(metrics[key], default=str)[:60]} (must be {what})"
    return ""


def metrics_state(metrics: dict) -> tuple[str, str]:
    """(state, note) of a run from its readable metrics.json."""
    missing = [k for k in TRAINING_KEYS if k not in metrics]
    if missing:
        return "unreadable", f"metrics.json lacks {', '.join(missing)}"
    wrong = _wrong_type(metrics)
    if wrong:
        return "unreadable", f"metrics.json has {wrong}: edited or damaged"
    tested = _number(metrics.get("test/acc"))
    if metrics.get("status") == "diverged":
        where = (
            f"diverged in epoch {_short(metrics.get('diverged_epoch'))}, step {_short(metrics.get('diverged_step'))}"
        )
        return "diverged", where + (
            f"; its best checkpoint tested {metrics['test/acc']:.4f}"
            if tested
            else "; no checkpoint from before the divergence was tested"
        )
    if "test/acc" not in metrics:
        epochs = metrics["epochs"]
        return "untested", (
            f"trained {epochs} epoch{'' if epochs == 1 else 's'}, not tested (test=false, or stopped while testing)"
        )
    if not tested:
        return "unreadable", f"test/acc is {_short(repr(metrics['test/acc']))}, not a number"
    if metrics.get("status", "completed") != "completed":
        return "unreadable", f"unknown status {_short(repr(metrics.get('status')))}"
    wrong = _wrong_type(metrics, numbers=True)
    if wrong:
        return "unreadable", f"metrics.json has {wrong}: edited or damaged"
    return "completed", ""


def _state_without_metrics(folder: Path) -> tuple[str, str]:
    job, _ = read_json(folder / "job_status.json")  # written for each sweep job by fmnist/training/sweeps.py
    if isinstance(job, dict) and job.get("status") in ("FAILED", "INTERRUPTED"):
        return job["status"].lower(), " ".join(str(job.get("error", "")).split())[:300]
    if (folder / "checkpoints" / "last.ckpt").is_file():
        return "interrupted", (f"stopped before it finished; continue it with `{resume_command(folder)}`")
    return "unfinished", "no metrics.json: still running, or stopped before its first checkpoint"


def read_run(folder: Path) -> dict | None:
    """The run in `folder` as its metrics plus `run_dir`, `state` and `note`; None if it is not a run."""
    config = _training_config(folder)
    metrics, problem = read_json(folder / "metrics.json")
    if isinstance(metrics, dict) and (config is not None or all(k in metrics for k in TRAINING_KEYS)):
        state, note = metrics_state(metrics)
    elif config is None and problem in ("", "missing"):
        return None  # another command's metrics.json (fmnist.evaluate's), or no file of a run at all
    elif problem == "missing":
        state, note = _state_without_metrics(folder)
    else:
        state, note = "unreadable", f"metrics.json {problem or 'is not a JSON object'}"
    run = dict(metrics) if state != "unreadable" and isinstance(metrics, dict) else {}
    if config is not None:
        run.setdefault("seed", config.get("seed"))
        try:  # the model config's name, as `name` in metrics.json
            hydra_config = _read_yaml(folder / ".hydra" / "hydra.yaml")
            run.setdefault("model", hydra_config["hydra"]["runtime"]["choices"]["model"])
        except (TypeError, KeyError):
            pass
    run.update(run_dir=str(folder), state=state, note=note)
    return run


def find_runs(paths: Iterable[str | Path]) -> list[dict]:
    """Every training run in the given run folders or sweep folders (searched recursively), in path order."""
    runs, seen = [], set()
    for path in map(Path, paths):
        if not path.exists():
            raise FmnistError(f"{path} does not exist")
        if not path.is_dir():
            raise FmnistError(f"{path} is not a folder: give run folders or sweep folders")
        candidates = {f.parent for f in path.rglob("metrics.json")}
        candidates |= {f.parent.parent for f in path.rglob("config.yaml") if f.parent.name == ".hydra"}
        found: list[Path] = []
        for folder in sorted(candidates, key=lambda p: p.parts):  # a run before the folders inside it
            if folder.resolve() in seen or any(run in folder.parents for run in found):
                continue
            run = read_run(folder)
            if run is not None:
                found.append(folder)
                seen.add(folder.resolve())
                runs.append(run)
    return runs


def completed(runs: Iterable[dict]) -> list[dict]:
    """The runs that trained and tested (the ones a comparison aggregates)."""
    return [r for r in runs if (r.get("state") or metrics_state(r)[0]) == "completed"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def recipe(run: dict) -> str:
    """The training recipe of a run in a few words, e.g. 'KerasRMSprop lr=0.0001, batch 100'."""
    optimizer = run.get("optimizer") or {}
    name = str(optimizer.get("_target_", "?")).rsplit(".", 1)[-1]
    part = partial_epochs(run)
    return f"{name} lr={optimizer.get('lr')}, batch {run.get('batch_size')}" + (f", {part}" if part else "")


def partial_epochs(metrics: dict) -> str:
    """'3,250 of 54,000 images per epoch' for a run whose epochs used part of the training split (e.g. with
    trainer.limit_train_batches), from its metrics.json; '' for whole epochs or when it does not say."""
    seen, split = metrics.get("epoch_images"), metrics.get("train_images")
    if isinstance(seen, int) and isinstance(split, int) and 0 < seen < split:
        return f"{seen:,} of {split:,} images per epoch"
    return ""


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (model, epochs, recipe) of the completed runs: test accuracy and macro F1 as mean and
    std over seeds. Other runs are left out (list them with their `state`)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in completed(runs):
        groups[(str(run["model"]), run["epochs"], recipe(run))].append(run)
    rows = []
    for (model, epochs, variant), members in sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))):
        acc_mean, acc_std = _mean_std([r["test/acc"] for r in members])
        f1 = [r["test/macro_f1"] for r in members if _number(r.get("test/macro_f1"))]
        f1_mean, f1_std = _mean_std(f1) if f1 else (float("nan"), float("nan"))
        class_names = [k[len("test/f1/") :] for k in members[0] if k.startswith("test/f1/")]
        seconds = [r["train_seconds"] for r in members if _number(r.get("train_seconds"))]
        rows.append(
            {
                "model": model,
                "epochs": epochs,
                "recipe": variant,
                "seeds": sorted(str(r.get("seed")) for r in members),
                "test_acc_mean": acc_mean,
                "test_acc_std": acc_std,
                "macro_f1_mean": f1_mean,
                "macro_f1_std": f1_std,
                "class_f1": {
                    c: statistics.fmean(r[f"test/f1/{c}"] for r in members if _number(r.get(f"test/f1/{c}")))
                    for c in class_names
                    if any(_number(r.get(f"test/f1/{c}")) for r in members)
                },
                "params_total_keras": members[0].get("params_total_keras"),
                "train_seconds_mean": statistics.fmean(seconds) if seconds else float("nan"),
                "device": ", ".join(sorted({str(r.get("device", "?")) for r in members})),
                "batch_size": members[0].get("batch_size"),
                "optimizer": members[0].get("optimizer"),
                "run_dirs": [r["run_dir"] for r in members],
            }
        )
    return rows


def format_count(value) -> str:
    """'1,234' for a parameter count, '?' where the run's metrics.json has none."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "?"


def format_seconds(seconds: float) -> str:
    """'49,810 s (13.8 h)' style: exact seconds plus a readable unit."""
    if not math.isfinite(seconds):
        return "?"
    if seconds >= 3600:
        return f"{seconds:,.0f} s ({seconds / 3600:.1f} h)"
    if seconds >= 120:
        return f"{seconds:,.0f} s ({seconds / 60:.0f} min)"
    return f"{seconds:.1f} s"
