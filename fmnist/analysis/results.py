"""The reproduction table: measured rows next to the study's, in docs/RESULTS.md and docs/results.json.

A new measurement replaces the row of the same model, epochs and recipe; the other rows already in
results.json are kept, so the table grows run by run.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import yaml

from fmnist.analysis.runs import format_count, format_seconds
from fmnist.analysis.study import STUDY
from fmnist.utils.config import CONF_DIR
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import write_json, write_section

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


@functools.cache
def recipe_epochs(model: str) -> int | None:
    """The epochs of a model's full recipe: the study's, or for a network beyond it its conf/model/<model>.yaml's."""
    if model in STUDY:
        return STUDY[model]["epochs"]
    path = Path(CONF_DIR) / "model" / f"{model}.yaml"
    config = yaml.safe_load(path.read_text()) if model.isidentifier() and path.is_file() else None
    epochs = (config.get("trainer") or {}).get("max_epochs") if isinstance(config, dict) else None
    return epochs if isinstance(epochs, int) else None


def results_table(rows: list[dict]) -> str:
    """Markdown: each measured (model, epochs) row next to the study's figures."""
    lines = [
        "| model | recipe | epochs | seeds | test accuracy (mean ± std) | macro F1 | params (Keras) | "
        "training time (mean) | device | study: accuracy, time |",
        "|---|---|---|---|---|---|---:|---|---|---|",
    ]
    for row in rows:
        study = STUDY.get(row["model"], {})
        recipe = recipe_epochs(row["model"])
        epochs = f"{row['epochs']}" + (f" of {recipe} (reduced)" if recipe and row["epochs"] < recipe else "")
        reference = (
            f"{study['test_acc']:.3f}, {format_seconds(study['train_seconds'])}" if study else "(beyond the study)"
        )
        lines.append(
            f"| {row['model']} | {row['recipe']} | {epochs} | {len(row['seeds'])} | {row['test_acc_mean']:.4f} ± "
            f"{row['test_acc_std']:.4f} | {row['macro_f1_mean']:.4f} | {format_count(row['params_total_keras'])} | "
            f"{format_seconds(row['train_seconds_mean'])} | {row['device']} | {reference} |"
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


def _earlier_rows(path: Path) -> dict:
    """The rows of an earlier results.json, or {} when there is none; a damaged one is one FmnistError."""
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FmnistError(f"{path} cannot be read ({error}): fix or remove it, its rows are kept otherwise") from None
    if not isinstance(rows, dict) or not all(isinstance(r, dict) and set(ROW_KEYS) <= r.keys() for r in rows.values()):
        raise FmnistError(f"{path} is not a results file of fmnist.reproduce: fix or remove it")
    return rows


def _identity(row: dict) -> tuple:
    """What a re-measurement shares with the row it replaces: model, epochs, recipe, and cpu or gpu."""
    kind = row.get("kind") or ("cpu" if str(row.get("device", "cpu")).startswith("cpu") else "gpu")
    return row["model"], row["epochs"], row["recipe"], kind


def write_results(rows: list[dict], docs: Path) -> None:
    """Add the rows to docs/results.json (each replacing the earlier row of its model, epochs, recipe and kind of
    device) and write the whole table into docs/RESULTS.md between its markers."""
    merged = _earlier_rows(docs / "results.json")
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
