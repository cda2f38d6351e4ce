"""Rebuilding a trained model from an fmnist checkpoint, with one clear error for each bad file."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from fmnist.errors import FmnistError
from fmnist.models import FashionClassifier


def _model_class_name(path: Path, checkpoint: dict) -> str | None:
    if isinstance(checkpoint.get("fmnist_model"), str):
        return checkpoint["fmnist_model"]
    run_config = path.parent.parent / ".hydra" / "config.yaml"  # <run>/checkpoints/x.ckpt
    if run_config.exists():
        return OmegaConf.select(OmegaConf.load(run_config), "model._target_")
    return None


def load_model(ckpt_path: str | Path) -> FashionClassifier:
    """The LightningModule saved in `ckpt_path`, rebuilt from its plain hyperparameters, in eval mode.

    Loads with `torch.load(weights_only=True)`: no pickled code runs.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FmnistError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise FmnistError(f"{path} is not an fmnist checkpoint: not a PyTorch checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only=True met something other than plain values
        refused = next((line.split(": ", 1)[1] for line in str(error).splitlines() if "WeightsUnpickler" in line),
                       "not plain values")
        raise FmnistError(f"{path} is refused: it carries pickled objects or code, which fmnist never loads "
                          f"({refused.split('. ')[0]})") from None
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise FmnistError(f"{path} is not an fmnist checkpoint: torch.load failed ({reason})") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise FmnistError(f"{path} is not an fmnist checkpoint: it has no Lightning state_dict and hyper_parameters")
    target = _model_class_name(path, checkpoint)
    if not target or not target.startswith("fmnist.models."):
        raise FmnistError(f"{path} is not an fmnist checkpoint: it does not name an fmnist model class")
    cls = hydra.utils.get_class(target)
    try:
        model = cls(**checkpoint["hyper_parameters"])
    except TypeError as error:
        raise FmnistError(f"{path} does not match {cls.__name__}: {error}") from None
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise FmnistError(f"{path} does not match {cls.__name__}: {detail}") from None
    return model.eval()
