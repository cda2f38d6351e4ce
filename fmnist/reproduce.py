"""Reproduce the study: its three recipes x several seeds as one Hydra multirun, then the results table.

    python -m fmnist.reproduce                         # cnn, rnn, bilstm; seeds 1 2 3; full epochs
    python -m fmnist.reproduce --models rnn -- trainer.max_epochs=50
    python -m fmnist.reproduce --collect outputs/reproduce/A outputs/reproduce/B   # tables only

Writes the table between the `results` markers of `docs/RESULTS.md` (the text around it is kept)
and `docs/results.json`. A run with fewer epochs than the study's recipe is labelled as reduced.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from fmnist.errors import FmnistError
from fmnist.runs import aggregate, find_runs, format_count, format_seconds, write_section
from fmnist.study import STUDY


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "rnn", "bilstm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--sweep-dir", default=None, help="multirun folder (default outputs/reproduce/<time>)")
    parser.add_argument(
        "--collect", nargs="*", default=[], help="also (or, with no training, only) tabulate the runs in these folders"
    )
    parser.add_argument("--docs", default="docs", help="where RESULTS.md and results.json go")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job, after --")
    args = parser.parse_args(argv)
    folders = list(args.collect)
    try:
        if not args.collect or args.overrides or args.sweep_dir:
            sweep = args.sweep_dir or f"outputs/reproduce/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
            command = [
                sys.executable,
                "-m",
                "fmnist.train",
                "-m",
                f"model={','.join(args.models)}",
                f"seed={','.join(map(str, args.seeds))}",
                f"hydra.sweep.dir={sweep}",
                *args.overrides,
            ]
            print("+", " ".join(command), flush=True)
            subprocess.run(command, check=True)
            folders.append(sweep)
        runs = find_runs(folders)
        if not runs:
            raise FmnistError(f"no runs with metrics.json in {', '.join(folders)}")
        rows = aggregate(runs)
        write_results(rows, Path(args.docs))
        print(results_table(rows))
        print(f"wrote {args.docs}/RESULTS.md and {args.docs}/results.json")
    except FmnistError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"error: the multirun failed (exit {error.returncode}); finished jobs are kept", file=sys.stderr)
        return error.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
