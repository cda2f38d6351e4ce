"""The reproduction table: measured rows next to the study's, in docs/RESULTS.md and docs/results.json.

A new measurement replaces the row of the same model, epochs and recipe; the other rows already in
results.json are kept, so the table grows run by run.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import yaml

from fmnist.analysis.runs import format_count, format_seconds, parse_json
from fmnist.analysis.study import STUDY
from fmnist.utils.config import CONF_DIR
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import read_bytes, write_json, write_section

ROW_KEYS = (
    "model",
    "recipe",
    "test_acc_mean",
    "test_acc_std",
    "macro_f1_mean",
    "seeds",
    "epochs",
    "train_seconds_mean",
    "device",
    "batch_size",
    "optimizer",
    "params_total_keras",
)
MAX_RESULTS_BYTES = 16 << 20  # docs/results.json holds tens of rows of a few hundred bytes


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# What the table and the merge need of each key of a row (NaN is a row's "not measured" for F1 and time).
ROW_CHECKS = {
    "model": (lambda v: isinstance(v, str), "a string"),
    "recipe": (lambda v: isinstance(v, str), "a string"),
    "device": (lambda v: isinstance(v, str), "a string"),
    "kind": (lambda v: isinstance(v, str), "a string"),
    "epochs": (_integer, "an integer"),
    "seeds": (lambda v: isinstance(v, list), "a list"),
    "test_acc_mean": (lambda v: _real(v) and math.isfinite(v), "a finite number"),
    "test_acc_std": (lambda v: _real(v) and math.isfinite(v), "a finite number"),
    "macro_f1_mean": (_real, "a number"),
    "train_seconds_mean": (_real, "a number"),
    "batch_size": (lambda v: v is None or _integer(v), "an integer or null"),
    "params_total_keras": (lambda v: v is None or _integer(v), "an integer or null"),
    "optimizer": (lambda v: v is None or isinstance(v, dict), "a mapping or null"),
}


def row_problem(row) -> str:
    """What makes `row` no results row (its first missing key or key of a wrong type, in a few words), or ''."""
    if not isinstance(row, dict):
        return "is not a mapping"
    missing = [key for key in ROW_KEYS if key not in row]
    if missing:
        return f"lacks {', '.join(missing)}"
    for key, (ok, what) in ROW_CHECKS.items():
        if key in row and not ok(row[key]):
            return f"has {key}={' '.join(repr(row[key])[:200].split())[:60]} (must be {what})"
    return ""


def _cell(value) -> str:
    """Text of a row as one cell of a Markdown table: one line, printable, its `|` escaped."""
    text = "".join(c for c in " ".join(str(value)[:1000].split()) if c.isprintable())
    return text[:300].replace("|", "\\|")


@functools.cache
def recipe_epochs(model: str) -> int | None:
    """The epochs of a model's full recipe: the study's, or for a network beyond it fmnist/conf/model/<model>.yaml's."""
    if model in STUDY:
        return STUDY[model]["epochs"]
    path = Path(CONF_DIR) / "model" / f"{model}.yaml"
    config = yaml.safe_load(path.read_text()) if model.isidentifier() and path.is_file() else None
    epochs = (config.get("trainer") or {}).get("max_epochs") if isinstance(config, dict) else None
    return epochs if isinstance(epochs, int) else None


def epochs_label(model: str, epochs: int) -> str:
    """`epochs`, and "of N (reduced)" when that is fewer than the model's full recipe."""
    recipe = recipe_epochs(model)
    return f"{epochs}" + (f" of {recipe} (reduced)" if recipe and epochs < recipe else "")


def results_table(rows: list[dict]) -> str:
    """Markdown: each measured (model, epochs) row next to the study's figures."""
    lines = [
        "| model | recipe | epochs | seeds | test accuracy (mean ± std) | macro F1 | params (Keras) | "
        "training time (mean) | device | study: accuracy, time |",
        "|---|---|---|---|---|---|---:|---|---|---|",
    ]
    for row in rows:
        study = STUDY.get(row["model"], {})
        model, variant, device = _cell(row["model"]), _cell(row["recipe"]), _cell(row["device"])
        epochs = epochs_label(row["model"], row["epochs"])
        reference = (
            f"{study['test_acc']:.3f}, {format_seconds(study['train_seconds'])}" if study else "(beyond the study)"
        )
        lines.append(
            f"| {model} | {variant} | {epochs} | {len(row['seeds'])} | {row['test_acc_mean']:.4f} ± "
            f"{row['test_acc_std']:.4f} | {row['macro_f1_mean']:.4f} | {format_count(row['params_total_keras'])} | "
            f"{format_seconds(row['train_seconds_mean'])} | {device} | {reference} |"
        )
    return "\n".join(lines)


def results_json(rows: list[dict]) -> dict:
    """Per row: test_acc_mean, test_acc_std, seeds, epochs, train_seconds_mean, device (and more)."""
    out = {}
    for row in rows:
        recipe = recipe_epochs(row["model"])
        key = row["model"] if row["epochs"] == recipe else f"{row['model']}@{row['epochs']}ep"
        key += "" if key not in out else f" ({row['recipe']})"
        out[key] = {k: row[k] for k in ROW_KEYS} | ({"kind": row["kind"]} if "kind" in row else {})
        # a speedrun tier's row says itself whether it ran the tier as configured (its epochs are the tier's)
        out[key]["full_recipe"] = bool(row.get("full_recipe", row["epochs"] == recipe))
    return out


def read_results(path: Path) -> dict:
    """The rows of an earlier results.json, or {} when there is none; a damaged one (or row) is one FmnistError."""
    if not path.is_file():
        return {}
    try:
        rows, problem = parse_json(read_bytes(path, MAX_RESULTS_BYTES))
    except OSError as error:
        rows, problem = None, f"cannot be read ({error.strerror or error})"
    except ValueError as error:
        rows, problem = None, str(error)
    if problem:
        raise FmnistError(f"{path} {problem}: fix or remove it, its rows are kept otherwise")
    if not isinstance(rows, dict):
        raise FmnistError(f"{path} is not a results file of fmnist.reproduce: fix or remove it")
    for key, row in rows.items():
        problem = row_problem(row)
        if problem:
            raise FmnistError(
                f"{path}: its row {' '.join(key.split())[:60]!r} {problem}: fix or remove that row (nothing written)"
            )
    return rows


def _identity(row: dict) -> tuple:
    """What a re-measurement shares with the row it replaces: model, epochs, recipe, and cpu or gpu."""
    kind = row.get("kind") or ("cpu" if str(row.get("device", "cpu")).startswith("cpu") else "gpu")
    return row["model"], row["epochs"], row["recipe"], kind


def write_results(rows: list[dict], docs: Path) -> None:
    """Add the rows to docs/results.json (each replacing the earlier row of its model, epochs, recipe and kind of
    device) and write the whole table into docs/RESULTS.md between its markers."""
    merged = read_results(docs / "results.json")
    for row in rows:
        problem = row_problem(row)
        if problem:
            raise FmnistError(f"a new results row {problem}: nothing was written")
    for key, row in results_json(rows).items():
        same = _identity(row)
        # a re-measurement replaces the earlier row of the same model, epochs, recipe and kind of device, whatever
        # its key: a GPU row never replaces a CPU row
        for old in [k for k, r in merged.items() if _identity(r) == same]:
            del merged[old]
        for candidate in (key, f"{key} ({row['recipe']})", f"{key} ({row['recipe']}, {same[-1]})"):
            if candidate not in merged:  # the same model and epochs under another recipe or device: another row
                break
        merged[candidate] = row
    merged = dict(sorted(merged.items(), key=lambda item: (item[1]["model"], item[1]["epochs"], item[0])))
    write_section(docs / "RESULTS.md", "results", results_table(list(merged.values())), "Reproduction results")
    write_json(docs / "results.json", merged)
