"""A run's metrics.json, and the `fmnist_*` figures its checkpoints keep so that a run can be finished from them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from fmnist.utils.files import write_json

# The fit-time figures of metrics.json, also kept in every checkpoint (FIT_KEY): a run stopped while testing is
# finished from its checkpoint without losing them.
FIT_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best")
# The checkpoint keys fmnist adds to Lightning's: the model's registry name, its running figures, the fit's
# figures and the epoch's share of the training split.
MODEL_KEY, RUNNING_KEY, FIT_KEY, SHARE_KEY = "fmnist_model", "fmnist_running", "fmnist_fit", "fmnist_epoch_share"


def dig(tree: Any, *keys: str) -> Any:
    """`tree[k1][k2]...`, or None where a level is not a mapping."""
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def is_count(value: Any) -> bool:
    """A plain integer >= 0 (no bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_metrics(path: Path) -> dict | None:
    """A run's metrics.json, or None when it is absent or not a JSON object (cut short, say)."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def metrics_describe(previous: dict | None, checkpoint: dict) -> bool:
    """Whether a run's metrics.json (written when a fit ends) describes the state its last.ckpt holds."""
    return previous is not None and (
        previous.get("steps") == checkpoint["global_step"] or previous.get("status") == "diverged"
    )  # last.ckpt: the last good epoch


def saved_fit(checkpoint: dict) -> tuple[dict[str, float], list[float]]:
    """The fit-time figures (FIT_KEYS) and `epoch_seconds` that a run's last.ckpt holds."""
    figures = checkpoint.get(FIT_KEY)
    fit = {
        key: float(value)
        for key, value in (figures.items() if isinstance(figures, dict) else ())
        if key in FIT_KEYS and isinstance(value, float)
    }
    best = dig(checkpoint, RUNNING_KEY, "val_acc_best", "max_value")  # checkpoints before fmnist_fit
    if "val/acc_best" not in fit and isinstance(best, torch.Tensor) and best.numel() == 1 and best.isfinite():
        fit["val/acc_best"] = best.item()
    seconds = dig(checkpoint, "callbacks", "EpochTimer", "epoch_seconds")
    numbers = isinstance(seconds, list) and all(isinstance(s, (int, float)) and math.isfinite(s) for s in seconds)
    return fit, [float(s) for s in seconds] if numbers else []


def saved_epoch_share(checkpoint: dict) -> dict[str, int]:
    """`epoch_images` and `train_images` as the run's last.ckpt holds them (plain integers only)."""
    share = checkpoint.get(SHARE_KEY)
    share = share if isinstance(share, dict) else {}
    return {key: share[key] for key in ("epoch_images", "train_images") if type(share.get(key)) is int}


# What a resume may drop from metrics.json: it belongs to a state of the run that the new one replaces.
NOT_CARRIED = ("test_checkpoint", "diverged_epoch", "diverged_step", "error")


def never_poorer(metrics: dict, previous: dict | None) -> dict:
    """`metrics` with every key of the run's previous metrics.json that it lacks (a resume never makes
    metrics.json poorer). Test results carried from an earlier best checkpoint name it in `test_checkpoint`."""
    if not previous:
        return metrics
    carried = {key: value for key, value in previous.items() if key not in metrics and key not in NOT_CARRIED}
    tested_on = previous.get("test_checkpoint", previous.get("best_checkpoint"))
    if any(key.startswith("test/") for key in carried) and tested_on != metrics.get("best_checkpoint"):
        metrics = {**metrics, "test_checkpoint": tested_on}
    return {**metrics, **carried}


def write_metrics(output_dir: Path, metrics: dict, previous: dict | None, writer: bool = True) -> dict:
    """Write metrics.json (atomically; only where `writer`: process 0), never poorer than the one it replaces;
    return what it holds."""
    metrics = never_poorer(metrics, previous)
    if writer:
        write_json(output_dir / "metrics.json", metrics)
    return metrics
