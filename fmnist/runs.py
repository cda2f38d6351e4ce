"""Finding finished runs (folders with `metrics.json`) and aggregating them over seeds."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from fmnist.errors import FmnistError


def find_runs(paths: Iterable[str | Path]) -> list[dict]:
    """Every `metrics.json` in the given run folders or sweep folders (searched recursively)."""
    runs, seen = [], set()
    for path in map(Path, paths):
        if not path.exists():
            raise FmnistError(f"{path} does not exist")
        files = [path / "metrics.json"] if (path / "metrics.json").exists() else sorted(path.rglob("metrics.json"))
        for file in files:
            if file.resolve() in seen:
                continue
            seen.add(file.resolve())
            metrics = json.loads(file.read_text())
            metrics["run_dir"] = str(file.parent)
            runs.append(metrics)
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def recipe(run: dict) -> str:
    """The training recipe of a run in a few words, e.g. 'KerasRMSprop lr=0.0001, batch 100'."""
    optimizer = run.get("optimizer") or {}
    name = str(optimizer.get("_target_", "?")).rsplit(".", 1)[-1]
    return f"{name} lr={optimizer.get('lr')}, batch {run.get('batch_size')}"


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (model, epochs, recipe): test accuracy and macro F1 as mean and std over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["model"], run["epochs"], recipe(run))].append(run)
    rows = []
    for (model, epochs, variant), members in sorted(groups.items()):
        acc_mean, acc_std = _mean_std([r["test/acc"] for r in members])
        f1 = [r["test/macro_f1"] for r in members if "test/macro_f1" in r]
        f1_mean, f1_std = _mean_std(f1) if f1 else (float("nan"), float("nan"))
        class_names = [k[len("test/f1/"):] for k in members[0] if k.startswith("test/f1/")]
        rows.append({
            "model": model, "epochs": epochs, "recipe": variant, "seeds": sorted(r["seed"] for r in members),
            "test_acc_mean": acc_mean, "test_acc_std": acc_std, "macro_f1_mean": f1_mean, "macro_f1_std": f1_std,
            "class_f1": {c: statistics.fmean(r[f"test/f1/{c}"] for r in members) for c in class_names},
            "params_total_keras": members[0].get("params_total_keras"),
            "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in members),
            "device": ", ".join(sorted({r["device"] for r in members})),
            "batch_size": members[0].get("batch_size"), "optimizer": members[0].get("optimizer"),
            "run_dirs": [r["run_dir"] for r in members],
        })
    return rows


def format_seconds(seconds: float) -> str:
    """'49,810 s (13.8 h)' style: exact seconds plus a readable unit."""
    if seconds >= 3600:
        return f"{seconds:,.0f} s ({seconds / 3600:.1f} h)"
    if seconds >= 120:
        return f"{seconds:,.0f} s ({seconds / 60:.0f} min)"
    return f"{seconds:.1f} s"


def write_section(page: Path, name: str, body: str, title: str) -> None:
    """Replace the text between `<!-- name:start -->` and `<!-- name:end -->` in a Markdown page.

    The text around the markers (hand-written narrative) is kept; a missing page or missing
    markers are created.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = page.read_text() if page.exists() else f"# {title}\n\n{start}\n{end}\n"
    if start not in text or end not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(f"{head}{start}\n{body}\n{end}{tail}")
