"""Evaluate any checkpoint: `python -m fmnist.evaluate ckpt_path=PATH [split=val] [output_dir=DIR]`.

Writes the classification report (md, json), confusion matrix, most confident mistakes, training
curves (from the run's TensorBoard logs, when beside the checkpoint), model summary and
metrics.json into `eval/` beside the checkpoint, and the figures to TensorBoard there.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from fmnist.checkpoints import load_model
from fmnist.errors import FmnistError, exit_on_error
from fmnist.reports import write_reports
from fmnist.summary import keras_summary_markdown


def pick_device(name: str) -> torch.device:
    """'auto' is the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate `cfg.ckpt_path` on `cfg.split`; return the metrics written to metrics.json."""
    if cfg.split not in ("test", "val"):
        raise FmnistError(f"split={cfg.split} is not allowed: use split=test or split=val")
    model = load_model(cfg.ckpt_path)
    ckpt = Path(cfg.ckpt_path)
    output_dir = Path(cfg.output_dir) if cfg.output_dir else ckpt.parent / ("eval" if cfg.split == "test" else "eval-val")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
    run_tensorboard = ckpt.parent.parent / "tensorboard"
    with SummaryWriter(str(output_dir / "tensorboard")) as writer:
        report, loss = write_reports(model, loader, datamodule.class_names, output_dir, device=pick_device(cfg.device),
                               tensorboard_dir=run_tensorboard if run_tensorboard.exists() else None,
                               writer=writer, title=type(model).__name__)
    (output_dir / "model_summary.md").write_text(keras_summary_markdown(model))
    split = cfg.split
    metrics = {"checkpoint": str(ckpt), "model_class": type(model).__name__, "split": split,
               f"{split}/acc": report["accuracy"]["f1-score"], f"{split}/loss": float(loss),
               f"{split}/macro_f1": report["macro avg"]["f1-score"],
               **{f"{split}/f1/{name}": report[name]["f1-score"] for name in datamodule.class_names}}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {output_dir}")
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    exit_on_error(evaluate, cfg)


if __name__ == "__main__":
    main()
