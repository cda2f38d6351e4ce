"""Side-by-side comparison of training runs (the logic of `fmnist.compare`).

One row per model (mean ± std over seeds) of the completed runs, with the study's figures as reference
rows; runs that did not complete (untested, diverged, failed, interrupted, unreadable: see fmnist/analysis/runs.py)
are listed below the table with their state and left out of the figures. Writes `comparison.md`, a
self-contained `comparison.html`, `per_class_f1.png` and `acc_vs_time.png`.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fmnist.analysis.results import epochs_label  # noqa: E402
from fmnist.analysis.runs import aggregate, completed, find_runs, format_count, format_seconds  # noqa: E402
from fmnist.analysis.study import STUDY  # noqa: E402
from fmnist.data.idx import CLASS_NAMES  # noqa: E402
from fmnist.utils.checks import check_new_files  # noqa: E402
from fmnist.utils.errors import FmnistError  # noqa: E402
from fmnist.utils.files import write_figure, write_text  # noqa: E402

WEAK_CLASSES = ("T-shirt/top", "Pullover", "Coat", "Shirt")  # the study's hard classes
STUDY_COLORS = {"cnn": "black", "rnn": "saddlebrown", "bilstm": "purple"}


def study_references(rows: list[dict]):
    """(model name, the study's figures) for each model among the rows that the study reported, and for all
    three of its networks when a row is a network beyond the study (lstm, resnet, ...): its yardstick."""
    names = list(dict.fromkeys(r["model"] for r in rows))
    if any(name not in STUDY for name in names):
        names += list(STUDY)
    for name in dict.fromkeys(names):
        if name in STUDY and name != "bilstm_stated":  # the stated-lr variant has the same reference
            yield name, STUDY[name]


def _label(row: dict) -> str:
    """A legend label; a `$` in a run's name is shown as is, not read as matplotlib mathtext."""
    epochs = epochs_label(str(row["model"]), row["epochs"]).replace(" (reduced)", " epochs, reduced")
    epochs = epochs if "reduced" in epochs else f"{epochs} epochs"
    return f"{row['model']} ({epochs}; {row['recipe']})".replace("$", r"\$")


def comparison_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the comparison table: measured rows, then the study's reference rows."""
    header = [
        "model",
        "recipe",
        "runs",
        "test accuracy",
        "macro F1",
        *CLASS_NAMES,
        "params (Keras)",
        "epochs",
        "training time",
        "device",
    ]
    cells = []
    for row in rows:
        std = lambda key, row=row: f" ± {row[key]:.4f}" if len(row["seeds"]) > 1 else ""
        cells.append(
            [
                row["model"],
                row["recipe"],
                str(len(row["seeds"])),
                f"{row['test_acc_mean']:.4f}{std('test_acc_std')}",
                f"{row['macro_f1_mean']:.4f}{std('macro_f1_std')}",
                *[f"{row['class_f1'].get(c, float('nan')):.3f}" for c in CLASS_NAMES],
                _count(row["params_total_keras"]),
                epochs_label(str(row["model"]), row["epochs"]),
                format_seconds(row["train_seconds_mean"]),
                row["device"],
            ]
        )
    for name, study in study_references(rows):
        cells.append(
            [
                f"study: {name}",
                "as published",
                "1",
                f"{study['test_acc']:.4f}",
                f"{study['macro_f1']:.3f}",
                *[f"{study['class_f1'][c]:.3f}" if c in study["class_f1"] else "" for c in CLASS_NAMES],
                f"{study['params_total_keras']:,}",
                str(study["epochs"]),
                format_seconds(study["train_seconds"]),
                "not stated",
            ]
        )
    return header, cells


_count = format_count  # a missing parameter count is "?"


STATUS_HEADER = ["run", "model", "seed", "state", "details"]


def status_rows(runs: list[dict], base: Path | None = None) -> list[list[str]]:
    """One row per run left out of the comparison: its folder, model, seed, state and why."""

    def where(run: dict) -> str:
        folder = Path(run["run_dir"])
        return str(folder.relative_to(base)) if base is not None and folder.is_relative_to(base) else str(folder)

    return [
        [where(r), str(r.get("model", "?")), str(r.get("seed", "?")), r["state"], r["note"]]
        for r in runs
        if r["state"] != "completed"
    ]


def markdown_text(text) -> str:
    """Text shown as itself in a Markdown page: no raw HTML from run names or notes (`<img onerror=...>`)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str) -> str:  # one table row per run, whatever the names hold
    return markdown_text(" ".join(str(text).split())).replace("|", "\\|")


def markdown_table(header: list[str], cells: list[list[str]]) -> str:
    """A Markdown table of `header` and `cells`, each cell escaped to stay in its column and show as text."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(_cell, row)) + " |" for row in cells])


def per_class_f1_figure(rows: list[dict]):
    """Grouped bars of per-class F1, one bar per model; the study's weak classes marked in red."""
    fig, ax = plt.subplots(figsize=(15, 4.8))
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(CLASS_NAMES))
    for i, row in enumerate(rows):
        ax.bar(
            x + (i - (len(rows) - 1) / 2) * width,
            [row["class_f1"].get(c, np.nan) for c in CLASS_NAMES],
            width,
            label=_label(row),
        )
    for name, study in study_references(rows):
        known = [(j, study["class_f1"][c]) for j, c in enumerate(CLASS_NAMES) if c in study["class_f1"]]
        ax.scatter(
            [j for j, _ in known],
            [v for _, v in known],
            marker="_",
            s=500,
            linewidths=2.5,
            color=STUDY_COLORS.get(name, "black"),
            label=f"study: {name}",
            zorder=3,
        )
    ax.set_xticks(x, CLASS_NAMES, rotation=20)
    for tick in ax.get_xticklabels():
        if tick.get_text() in WEAK_CLASSES:
            tick.set_color("crimson")
            tick.set_fontweight("bold")
    low = min([v for r in rows for v in r["class_f1"].values()] + [0.6])
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_ylabel("F1")
    ax.set_title("Per-class F1 on the test set (the study's hard classes in red)")
    ax.grid(axis="y", alpha=0.3)
    entries = len(ax.get_legend_handles_labels()[1])
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(3, max(1, entries)))
    fig.tight_layout()  # the legend under the bars, in columns: no empty margin beside them
    return fig


def acc_vs_time_figure(rows: list[dict]):
    """Test accuracy against training time (log scale), measured runs and the study's."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for row in rows:
        ax.errorbar(
            row["train_seconds_mean"],
            row["test_acc_mean"],
            yerr=row["test_acc_std"],
            fmt="o",
            capsize=4,
            label=_label(row),
        )
    for name, study in study_references(rows):
        ax.scatter(study["train_seconds"], study["test_acc"], marker="*", s=160, facecolors="none", edgecolors="black")
        ax.annotate(
            f"study: {name}",
            (study["train_seconds"], study["test_acc"]),
            fontsize=8,
            textcoords="offset points",
            xytext=(6, -10),
        )
    ax.set_xscale("log")
    ax.set_xlabel("training time (s, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs training time")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()  # the legend under the axes: it never hides a point
    return fig


def _html_table(header: list[str], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr"
        + (' class="study"' if row[0].startswith("study") else "")
        + ">"
        + "".join(f"<td>{html.escape(c)}</td>" for c in row)
        + "</tr>"
        for row in cells
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(header, cells, images: dict[str, Path], others: list[list[str]] = ()) -> str:
    """One self-contained page: the table, the runs left out, and the figures embedded as base64 PNGs."""
    left_out = f"<h2>Runs not in the comparison</h2>{_html_table(STATUS_HEADER, list(others))}" if others else ""
    figures = "".join(
        f'<figure><img alt="{html.escape(CAPTIONS[name])}" '
        f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
        f"<figcaption>{html.escape(CAPTIONS[name])}</figcaption></figure>"
        for name, path in images.items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fmnist comparison</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
tr.study{{color:#555;font-style:italic;background:#f6f6f6}}img{{max-width:100%}}figure{{margin:2em 0}}</style>
</head><body><h1>fmnist: model comparison</h1>
<p>Test-set accuracy and F1 per model (mean ± std over seeds); italic rows are the study's reported figures.</p>
{_html_table(header, cells)}{left_out}{figures}</body></html>
"""


OUTPUTS = ("comparison.md", "comparison.html", "per_class_f1.png", "acc_vs_time.png")
CAPTIONS = {"per_class_f1": "Per-class F1 on the test set", "acc_vs_time": "Test accuracy against training time"}


def compare(paths: list[str], out: str | None = None, not_run: list[list[str]] = (), overwrite: bool = False) -> Path:
    """Write the comparison files for the runs found under `paths`; return the output folder.

    `not_run` adds status rows (as `status_rows` makes them) for sweep jobs that have no folder. Files of
    an earlier comparison in the output folder are replaced only with `overwrite`.
    """
    runs = find_runs(paths)
    if not runs and not not_run:
        raise FmnistError(
            f"no runs of fmnist.train in {', '.join(paths)} (a run folder holds its .hydra/config.yaml "
            "or its metrics.json). Fix: give run folders or multirun folders"
        )
    rows = aggregate(runs)
    out_dir = Path(out or paths[0])
    try:
        check_new_files([out_dir / name for name in OUTPUTS], overwrite, key="--out")
    except FmnistError as error:
        raise FmnistError(
            str(error).replace("--out=PATH", "--out DIR").replace("overwrite=true", "--overwrite")
        ) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    header, cells = comparison_rows(rows)
    others = status_rows(runs, Path(paths[0])) + list(not_run)
    images = {"per_class_f1": out_dir / "per_class_f1.png", "acc_vs_time": out_dir / "acc_vs_time.png"}
    if not rows:
        images = {}  # no completed run to draw
    for name, make in (("per_class_f1", per_class_f1_figure), ("acc_vs_time", acc_vs_time_figure)):
        if name in images:
            fig = make(rows)
            write_figure(fig, images[name], dpi=110, bbox_inches="tight")  # the legend below, whole
            plt.close(fig)
    table = markdown_table(header, cells) if rows else "No run completed its training and test."
    left_out = f"\n\n## Runs not in the comparison\n\n{markdown_table(STATUS_HEADER, others)}" if others else ""
    figures = "".join(f"\n\n![{CAPTIONS[name]}]({path.name})" for name, path in images.items())
    write_text(
        out_dir / "comparison.md",
        f"# Model comparison\n\n{len(completed(runs))} completed runs of {len(runs) + len(not_run)} from "
        f"{markdown_text(', '.join(paths))}.\n\n{table}{left_out}{figures}\n",
    )
    write_text(out_dir / "comparison.html", html_page(header, cells, images, others))
    print(table + left_out)
    print(f"wrote {out_dir}/comparison.md, comparison.html" + "".join(f", {p.name}" for p in images.values()))
    return out_dir
