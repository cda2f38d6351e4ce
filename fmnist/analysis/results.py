"""The reproduction table: measured rows next to the study's, in docs/RESULTS.md and docs/results.json."""

from __future__ import annotations

import json
from pathlib import Path

from fmnist.analysis.runs import format_count, format_seconds
from fmnist.analysis.study import STUDY
from fmnist.utils.files import write_section


def results_table(rows: list[dict]) -> str:
    """Markdown: each measured (model, epochs) row next to the study's figures."""
    lines = [
        "| model | recipe | epochs | seeds | test accuracy (mean ± std) | macro F1 | params (Keras) | "
        "training time (mean) | device | study: accuracy, time |",
        "|---|---|---|---|---|---|---:|---|---|---|",
    ]
    for row in rows:
        study = STUDY.get(row["model"], {})
        recipe = study.get("epochs")
        epochs = f"{row['epochs']}" + (f" of {recipe} (reduced)" if recipe and row["epochs"] < recipe else "")
        reference = f"{study['test_acc']:.3f}, {format_seconds(study['train_seconds'])}" if study else ""
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
        recipe = STUDY.get(row["model"], {}).get("epochs")
        key = row["model"] if row["epochs"] == recipe else f"{row['model']}@{row['epochs']}ep"
        key += "" if key not in out else f" ({row['recipe']})"
        out[key] = {
            k: row[k]
            for k in (
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
        }
        out[key]["full_recipe"] = row["epochs"] == recipe
    return out


def write_results(rows: list[dict], docs: Path) -> None:
    """Update docs/RESULTS.md between its markers, and rewrite docs/results.json."""
    write_section(docs / "RESULTS.md", "results", results_table(rows), "Reproduction results")
    (docs / "results.json").write_text(json.dumps(results_json(rows), indent=2) + "\n")
