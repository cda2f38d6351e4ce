"""Rebuilding a trained model from an fmnist checkpoint, with one clear error for each bad file.

The class comes from fmnist's registry and its arguments are checked first (fmnist/models/trust.py): nothing in
the file decides what code runs. Nor how much memory it takes: the archive's entries are checked before
`torch.load` reads them, the network is sized before it is built, and running out of memory is one error too.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from fmnist.models import FashionClassifier
from fmnist.models.trust import MAX_PARAMETERS, checked_hparams, checked_size, model_class
from fmnist.utils.errors import FmnistError

# The most bytes a checkpoint may hold, or unpack to: five float32 copies of the largest network fmnist builds
# from a file (its weights, the two states of their moving average, two Adam moments), and room for the rest.
MAX_CHECKPOINT_BYTES = 5 * 4 * MAX_PARAMETERS + 2**26
_METHODS = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


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


def _out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure: Python's, or torch's (a RuntimeError) on the CPU or a GPU."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(
        words in str(error) for words in ("allocate memory", "not enough memory", "out of memory")
    )


def _check_archive(path: Path) -> None:
    """One FmnistError unless `path` is a zip archive as torch.save writes it, no larger than
    MAX_CHECKPOINT_BYTES: its entries stored (uncompressed), so that what it unpacks to is no larger either."""
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise FmnistError(
            f"{path} is refused: its {size:,} bytes are beyond the {MAX_CHECKPOINT_BYTES:,} of a checkpoint "
            f"of a network of {MAX_PARAMETERS:,} parameters, the largest fmnist builds from a file"
        )
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise FmnistError(f"{path} is not an fmnist checkpoint: not a PyTorch checkpoint file")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except Exception as error:  # noqa: BLE001 - any unreadable archive gets the same message
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise FmnistError(f"{path} is not an fmnist checkpoint: not a readable zip archive ({reason})") from None
    for entry in entries:
        # torch.save stores every entry: a compressed one was re-zipped, and could unpack to far more than its size
        if entry.compress_type != zipfile.ZIP_STORED or entry.compress_size != entry.file_size:
            method = _METHODS.get(entry.compress_type, f"method {entry.compress_type}")
            raise FmnistError(
                f"{path} is refused: its entry {entry.filename!r} is compressed ({method}, {entry.compress_size:,} "
                f"bytes unpacking to {entry.file_size:,}), which torch.save never writes. "
                "Fix: use the checkpoint as fmnist.train wrote it"
            )
    unpacked = sum(entry.file_size for entry in entries)  # entries may overlap: each is counted
    if unpacked > MAX_CHECKPOINT_BYTES:
        raise FmnistError(
            f"{path} is refused: its entries declare {unpacked:,} bytes, beyond the {MAX_CHECKPOINT_BYTES:,} "
            f"of a checkpoint of a network of {MAX_PARAMETERS:,} parameters, the largest fmnist builds from a file"
        )


def load_model(ckpt_path: str | Path) -> FashionClassifier:
    """The LightningModule saved in `ckpt_path`, rebuilt from its plain hyperparameters, in eval mode.

    Loads with `torch.load(weights_only=True)`: no pickled code runs. The archive and the network's size are
    checked before anything of either is allocated; running out of memory anyway is one FmnistError.
    """
    path = Path(ckpt_path)
    try:
        return _load_model(path)
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise FmnistError(f"{path} could not be loaded: out of memory ({reason})") from None


def _load_model(path: Path) -> FashionClassifier:
    if not path.is_file():
        raise FmnistError(f"checkpoint not found: {path}")
    _check_archive(path)
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
        if _out_of_memory(error):
            raise
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise FmnistError(f"{path} is not an fmnist checkpoint: torch.load failed ({reason})") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise FmnistError(f"{path} is not an fmnist checkpoint: it has no Lightning state_dict and hyper_parameters")
    cls = _model_class(path, checkpoint)
    hparams = checked_hparams(cls, checkpoint["hyper_parameters"], path)
    try:
        checked_size(cls, hparams, path)
        model = cls(**hparams)
    except (TypeError, ValueError) as error:  # e.g. a dropout rate outside [0, 1]
        raise FmnistError(f"{path} does not match {cls.__name__}: {' '.join(str(error).split())[:300]}") from None
    if not isinstance(checkpoint["state_dict"], dict):
        raise FmnistError(f"{path} is not an fmnist checkpoint: its state_dict is not a mapping of tensors")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        if _out_of_memory(error):
            raise
        detail = " ".join(str(error).split())[:300]
        raise FmnistError(f"{path} does not match {cls.__name__}: {detail}") from None
    epoch = checkpoint.get("epoch")
    model.epochs_trained = epoch + 1 if type(epoch) is int and epoch >= 0 else None  # Lightning counts from 0
    return model.eval()
