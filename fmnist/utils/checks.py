"""Checking what a command was given before it does any work: values against rules, the device, output files.

Shared by every command (`train` and the commands that read a checkpoint), so that none imports another.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fmnist.utils.errors import FmnistError

# key: (type test, type name, range test or None, allowed values, whether null is allowed)
Rule = tuple[Callable[[Any], bool], str, Callable[[Any], bool] | None, str, bool]
SEED_RANGE = "an integer from 0 to 4294967295"  # numpy's and Lightning's seeds are unsigned 32-bit


def integer(value: Any) -> bool:
    """Whether `value` is an int (a bool is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def number(value: Any) -> bool:
    """Whether `value` is a finite int or float (a bool is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def boolean(value: Any) -> bool:
    """Whether `value` is a bool."""
    return isinstance(value, bool)


def text(value: Any) -> bool:
    """Whether `value` is a non-empty string."""
    return isinstance(value, str) and value != ""


def seed_in_range(value: int) -> bool:
    """Whether `value` is a valid unsigned 32-bit seed (0 to 2**32 - 1)."""
    return 0 <= value < 2**32


def shown(value: Any) -> str:
    """A config value as the user typed it: null, [0.2], 5."""
    if value is None:
        return "null"
    if OmegaConf.is_config(value):
        return str(OmegaConf.to_container(value))
    return str(value)


def _missing(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and OmegaConf.is_missing(node, leaf)


def check_values(cfg: DictConfig, rules: dict[str, Rule]) -> None:
    """One FmnistError naming the first key whose value is missing, of the wrong type or out of range."""
    for key, (is_type, type_name, in_range, allowed, nullable) in rules.items():
        if _missing(cfg, key):
            raise FmnistError(f"{key} is required: add {key}=... ({allowed})")
        value = OmegaConf.select(cfg, key, default=KeyError)
        if value is KeyError or (value is None and nullable):
            continue
        if value is None or not is_type(value):
            raise FmnistError(f"{key}={shown(value)} is not {type_name}: must be {allowed}")
        if in_range is not None and not in_range(value):
            raise FmnistError(f"{key}={shown(value)} is out of range: must be {allowed}")


# The data keys every command that reads Fashion-MNIST takes (train's own rules add the training ones).
DATA_RULES: dict[str, Rule] = {
    "data.root": (text, "a folder", None, "a folder (the data goes to <root>/FashionMNIST/raw/)", False),
    "data.val_fraction": (number, "a number", lambda v: 0 < v < 1, "a number strictly between 0 and 1", False),
    "data.eval_batch_size": (integer, "an integer", lambda v: v >= 1, "an integer >= 1 (or null)", True),
    "data.download": (boolean, "true or false", None, "true or false", False),
    "data.num_workers": (integer, "an integer", lambda v: v >= 0, "an integer >= 0", False),
}


def pick_device(name: Any) -> torch.device:
    """`device=`: 'auto' is the first GPU when there is one, else the CPU; a named device must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except (RuntimeError, ValueError):
        raise FmnistError(f"device={name} is not a device: use device=auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise FmnistError(
                f"device={name}: this machine has no CUDA GPU that torch can use. "
                "Fix: device=cpu (or device=auto, which picks a GPU when there is one)"
            )
        if (device.index or 0) >= count:
            raise FmnistError(f"device={name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return device
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise FmnistError(f"device={name} is not available here: use device=auto, cpu, cuda or cuda:N")


def check_output_folder(folder: Path, key: str = "output_dir") -> None:
    """Create `folder` if needed and probe it with a small write, or one FmnistError naming it and `key`."""
    if os.path.lexists(folder) and not folder.is_dir():
        raise FmnistError(f"the output folder {folder} is a file, not a folder. Fix: choose a folder with {key}=PATH")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"fmnist")
            probe.flush()
    except OSError as error:
        raise FmnistError(
            f"cannot write to the output folder {folder}: {error.strerror or error}. "
            f"Fix: choose a writable folder with {key}=PATH"
        ) from None


def check_new_files(paths: Iterable[Path], overwrite: bool, key: str = "output_dir") -> None:
    """Refuse, before anything is written, to replace files that this invocation did not create.

    `paths` are what the command is about to write; with `overwrite=true` existing ones are replaced.
    """
    paths = list(paths)
    folders = [p for p in paths if p.is_dir()]
    if folders:
        raise FmnistError(f"{folders[0]} is a folder, where the command writes a file. Fix: choose another {key}=PATH")
    existing = [p for p in paths if os.path.lexists(p)]  # a dangling link is there too: never written through
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more of the files it writes)" if len(existing) > 1 else ""
        raise FmnistError(
            f"{existing[0]} already exists{more} and would be replaced. Fix: choose another "
            f"{key}=PATH, or add overwrite=true to replace it"
        )
