"""Evaluating a checkpoint on a split and writing its reports (the logic of `fmnist.evaluate`).

Writes the classification report (md, json), confusion matrix, most confident mistakes, training
curves (from the run's TensorBoard logs, when beside the checkpoint), model summary and
metrics.json into `eval/` beside the checkpoint. The figures go to TensorBoard as a new event file in the
run's own events folder (tags `evaluate/<split>/...`), so `tensorboard --logdir outputs` shows them under the
run they evaluate; a checkpoint outside a run gets `tensorboard/` in the output folder instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from fmnist.analysis.ood import measure_gate, ood_figure, ood_markdown
from fmnist.analysis.reports import events_dir, write_reports
from fmnist.models.checkpoint import load_model
from fmnist.models.gate import Gate, gate_for
from fmnist.models.summary import keras_summary_markdown
from fmnist.utils.checks import (
    DATA_RULES,
    boolean,
    check_new_files,
    check_output_folder,
    check_values,
    integer,
    pick_device,
    text,
)
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import write_figure, write_json, write_text

RULES = {
    "ckpt_path": (text, "a file name", None, "a checkpoint file, e.g. outputs/cnn/<run>/checkpoints/last.ckpt", False),
    "split": (lambda v: v in ("test", "val"), "test or val", None, "test or val", False),
    "output_dir": (text, "a folder", None, "a folder (or null: beside the checkpoint)", True),
    "overwrite": (boolean, "true or false", None, "true or false", False),
    "device": (text, "a device name", None, "auto, cpu, cuda or cuda:N", False),
    "ood": (boolean, "true or false", None, "true or false", False),
    "ood_images": (integer, "an integer", lambda v: 10 <= v <= 10_000, "an integer from 10 to 10000", False),
    **DATA_RULES,
}
# What write_reports writes (curves.png when the run's curves are found), then the model summary and metrics;
# TensorBoard event files are new files, never replaced.
OUTPUTS = (
    "classification_report.json",
    "classification_report.md",
    "confusion_matrix.png",
    "misclassified.png",
    "curves.png",
    "model_summary.md",
    "metrics.json",
)
OOD_OUTPUTS = ("ood.md", "ood.json", "ood.png")  # ood=true: the garment gate's report


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate `cfg.ckpt_path` on `cfg.split`; return the metrics written to metrics.json."""
    check_values(cfg, RULES)
    if cfg.ood and cfg.split == "val":  # the gate is fitted on the validation split: it is measured on the test split
        raise FmnistError(
            "ood=true with split=val: the garment gate is fitted on the validation split and measured on the test "
            "split, which split=val keeps unseen. Fix: ood=true with split=test, or split=val without ood=true"
        )
    device = pick_device(cfg.device)
    model = load_model(cfg.ckpt_path)
    ckpt = Path(cfg.ckpt_path)
    output_dir = (
        Path(cfg.output_dir) if cfg.output_dir else ckpt.parent / ("eval" if cfg.split == "test" else "eval-val")
    )
    check_output_folder(output_dir)
    check_new_files([output_dir / name for name in OUTPUTS + (OOD_OUTPUTS if cfg.ood else ())], cfg.overwrite)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
    if len(loader.dataset) == 0:
        raise FmnistError(
            f"split=val is empty: data.val_fraction={cfg.data.val_fraction} leaves no validation image. "
            "Fix: a larger data.val_fraction, or split=test"
        )
    gate = gate_for(model, ckpt, datamodule) if cfg.ood else None  # before any report: a fit that fails writes none
    run_tensorboard = events_dir(ckpt.parent.parent / "tensorboard")
    # beside the run's event files, in a new file of its own (named by time, host, pid, then .evaluate); a run
    # that cannot be written to (someone else's) keeps its folder as it is
    writable = run_tensorboard is not None and os.access(run_tensorboard, os.W_OK)
    events_folder = run_tensorboard if writable else output_dir / "tensorboard"
    with SummaryWriter(str(events_folder), filename_suffix=".evaluate") as writer:
        report, loss = write_reports(
            model,
            loader,
            datamodule.class_names,
            output_dir,
            device=device,
            tensorboard_dir=run_tensorboard,
            writer=writer,
            tag_prefix=f"evaluate/{cfg.split}/",
            step=model.epochs_trained or 0,
            title=type(model).__name__,
            epochs=model.epochs_trained,
        )
    write_text(output_dir / "model_summary.md", keras_summary_markdown(model))
    split = cfg.split
    metrics = {
        "checkpoint": str(ckpt),
        "model_class": type(model).__name__,
        "split": split,
        f"{split}/acc": report["accuracy"]["f1-score"],
        f"{split}/loss": float(loss),
        f"{split}/macro_f1": report["macro avg"]["f1-score"],
        **{f"{split}/f1/{name}": report[name]["f1-score"] for name in datamodule.class_names},
    }
    if cfg.ood:
        metrics |= measure_ood(model, gate, ckpt, datamodule, output_dir, cfg.ood_images)
    write_json(output_dir / "metrics.json", metrics)
    print(f"wrote {output_dir}")
    return metrics


def measure_ood(model, gate: Gate, ckpt: Path, datamodule, output_dir: Path, images: int) -> dict:
    """The garment gate's report (ood.md, ood.json, ood.png); returns its figures for metrics.json."""
    report, scores = measure_gate(model, gate, datamodule.test_set.images, datamodule.test_set.labels, images)
    title = f"{type(model).__name__} ({model.epochs_trained} epochs), {ckpt}"
    write_json(output_dir / "ood.json", {"checkpoint": str(ckpt), **report})
    write_text(output_dir / "ood.md", ood_markdown(report, title))
    figure = ood_figure(report, scores, title)
    write_figure(figure, output_dir / "ood.png", dpi=120)
    plt.close(figure)
    for kind, row in report["kinds"].items():
        print(f"garment gate vs {kind}: AUROC {row['gate_auroc']:.4f}, FPR at 95% TPR {row['gate_fpr95']:.3f}")
    return {
        "ood/test_kept": report["test_garments"]["kept"],
        **{f"ood/{kind}/auroc": row["gate_auroc"] for kind, row in report["kinds"].items()},
        **{f"ood/{kind}/fpr95": row["gate_fpr95"] for kind, row in report["kinds"].items()},
    }
