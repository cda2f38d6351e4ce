"""Rebuilding a trained model from an fmnist checkpoint, with one clear error for each bad file.

The class comes from fmnist's registry and its arguments are checked first (fmnist/models/trust.py): nothing in
the file decides what code runs.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from fmnist.models import FashionClassifier
from fmnist.models.trust import checked_hparams, model_class
from fmnist.utils.errors import FmnistError


def _model_class(path: Path, checkpoint: dict) -> type[FashionClassifier]:
    """The registry class that the checkpoint names, or (older checkpoints) its run's config names."""
    if "fmnist_model" in checkpoint:
        return model_class(checkpoint["fmnist_model"], path)
    run_config = path.parent.parent / ".hydra" / "config.yaml"  # <run>/checkpoints/x.ckpt
    if not run_config.is_file():
        raise FmnistError(f"{path} is not an fmnist checkpoint: it does not name an fmnist model class")
    try:
        config = OmegaConf.to_container(OmegaConf.load(run_config), resolve=False)  # an interpolation names no class
    except Exception as error:  # noqa: BLE001 - any unreadable config gets the same message
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise FmnistError(f"{path} names no model class and its run's {run_config} is unreadable ({reason})") from None
    model = config.get("model") if isinstance(config, dict) else None
    return model_class(model.get("_target_") if isinstance(model, dict) else None, run_config, key="model._target_")


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
        refused = next(
            (line.split(": ", 1)[1] for line in str(error).splitlines() if "WeightsUnpickler" in line),
            "not plain values",
        )
        raise FmnistError(
            f"{path} is refused: it carries pickled objects or code, which fmnist never loads "
            f"({refused.split('. ')[0]})"
        ) from None
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise FmnistError(f"{path} is not an fmnist checkpoint: torch.load failed ({reason})") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise FmnistError(f"{path} is not an fmnist checkpoint: it has no Lightning state_dict and hyper_parameters")
    cls = _model_class(path, checkpoint)
    hparams = checked_hparams(cls, checkpoint["hyper_parameters"], path)
    try:
        model = cls(**hparams)
    except (TypeError, ValueError) as error:  # e.g. a dropout rate outside [0, 1]
        raise FmnistError(f"{path} does not match {cls.__name__}: {' '.join(str(error).split())[:300]}") from None
    if not isinstance(checkpoint["state_dict"], dict):
        raise FmnistError(f"{path} is not an fmnist checkpoint: its state_dict is not a mapping of tensors")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise FmnistError(f"{path} does not match {cls.__name__}: {detail}") from None
    return model.eval()
