"""Checking a training config before any data is read: types and ranges of its keys, the accelerator,
the splits the data allows, the output folder.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, ListConfig, OmegaConf

from fmnist.data.datamodule import validation_size
from fmnist.data.idx import check_root, count_images
from fmnist.models.attention import valid_patch
from fmnist.models.base import valid_triangle
from fmnist.utils.checks import (
    DATA_RULES,
    SEED_RANGE,
    Rule,
    boolean,
    check_output_folder,
    check_values,
    integer,
    number,
    seed_in_range,
    shown,
)
from fmnist.utils.errors import FmnistError


def _probability(value: Any) -> bool:
    return 0 <= value < 1  # Keras's Dropout rate; 1 would zero every activation


def _list_of(count: int, item: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, (list, ListConfig)) and len(value) == count and all(map(item, value))


def _batches(value: Any) -> bool:
    return value >= 1 if integer(value) else 0 < value <= 1  # Lightning: an int counts batches, a float is a share


def _devices(value: Any) -> bool:
    return integer(value) or value == "auto" or (isinstance(value, (list, ListConfig)) and all(map(integer, value)))


def _duration(value: Any) -> bool:
    try:  # Lightning's own parser of trainer.max_time
        Timer(duration=value)
    except (MisconfigurationException, TypeError, ValueError):
        return False
    return isinstance(value, str)  # a {hours: ...} mapping would reach Lightning as a DictConfig, which it rejects


LIMIT = "an integer >= 1 (batches) or a fraction in (0, 1] (or null)"


CONFIG_RULES: dict[str, Rule] = {
    **DATA_RULES,
    "data.batch_size": (integer, "an integer", lambda v: v >= 1, "an integer >= 1", False),
    "data.batches_per_step": (integer, "an integer", lambda v: v >= 1, "an integer >= 1", False),
    "data.device_resident": (boolean, "true or false", None, "true or false", False),
    "trainer.max_epochs": (
        integer,
        "an integer",
        lambda v: v >= 1 or v == -1,
        "an integer >= 1 (or -1 for no limit)",
        True,
    ),
    "trainer.max_steps": (
        integer,
        "an integer",
        lambda v: v >= 1 or v == -1,
        "an integer >= 1 (or -1 for no limit)",
        False,
    ),
    "trainer.max_time": (
        _duration,
        "a duration DD:HH:MM:SS",
        lambda v: Timer(duration=v).time_remaining() > 0,
        "a duration DD:HH:MM:SS longer than 0, e.g. 00:12:00:00 for 12 hours (or null)",
        True,
    ),
    "trainer.limit_train_batches": (number, "a number", _batches, LIMIT, True),
    "trainer.limit_val_batches": (number, "a number", _batches, LIMIT, True),
    "trainer.limit_test_batches": (number, "a number", _batches, LIMIT, True),
    "trainer.check_val_every_n_epoch": (integer, "an integer", lambda v: v >= 1, "an integer >= 1 (or null)", True),
    "trainer.devices": (
        _devices,
        "an integer, a list of device numbers or auto",
        lambda v: v not in (0, []),
        "an integer >= 1, -1 for all, a list of device numbers or auto",
        False,
    ),
    "trainer.gradient_clip_val": (number, "a number", lambda v: v >= 0, "a number >= 0 (or null)", True),
    "model.optimizer.lr": (number, "a number", lambda v: v > 0, "a number > 0", False),
    "model.conv_dropout": (
        _list_of(3, number),
        "a list of 3 numbers",
        lambda v: all(map(_probability, v)),
        "a list of 3 numbers in [0, 1), one per convolution stage",
        False,
    ),
    "model.dense_dropout": (number, "a number", _probability, "a number in [0, 1)", False),
    "model.dropout": (number, "a number", _probability, "a number in [0, 1)", False),
    "model.label_smoothing": (number, "a number", _probability, "a number in [0, 1)", False),
    "model.lr_schedule": (boolean, "true or false", None, "true or false", False),
    "model.lr_triangle": (
        _list_of(3, number),
        "a list of 3 numbers",
        valid_triangle,
        "[start, peak, end]: start factor in (0, 1], peak in (0, 1) (a share of the steps), end factor in [0, 1]",
        False,
    ),
    "model.tta": (boolean, "true or false", None, "true or false", False),
    "model.widths": (
        _list_of(3, integer),
        "a list of 3 integers",
        lambda v: min(v) >= 1,
        "3 channel counts >= 1",
        False,
    ),
    "model.whiten": (boolean, "true or false", None, "true or false", False),
    "model.units": (_list_of(3, integer), "a list of 3 integers", lambda v: min(v) >= 1, "3 unit counts >= 1", False),
    "model.patch": (
        _list_of(2, integer),
        "a list of 2 integers",
        valid_patch,
        "[height, width], each dividing 28 (1, 2, 4, 7, 14 or 28)",
        False,
    ),
    "model.dim": (integer, "an integer", lambda v: v >= 1, "an integer >= 1", False),
    "model.stem": (integer, "an integer", lambda v: v >= 0, "an integer >= 0 (0: no stem)", False),
    "model.heads": (integer, "an integer", lambda v: v >= 1, "an integer >= 1", False),
    "model.mlp_ratio": (integer, "an integer", lambda v: v >= 1, "an integer >= 1", False),
    "model.depth": (integer, "an integer", lambda v: v >= 1, "an integer >= 1", False),
    "model.widen": (integer, "an integer", lambda v: v >= 1, "an integer >= 1", False),
    "data.augment.flip": (number, "a number", lambda v: 0 <= v <= 1, "a probability in [0, 1]", False),
    "data.augment.crop_padding": (integer, "an integer", lambda v: 0 <= v <= 14, "pixels from 0 to 14", False),
    "data.augment.erasing": (number, "a number", lambda v: 0 <= v <= 1, "a probability in [0, 1]", False),
    "tf32": (boolean, "true or false", None, "true, false or null", True),
    "seed": (integer, "an integer", seed_in_range, f"{SEED_RANGE} (or null)", True),
    "test": (boolean, "true or false", None, "true or false", False),
    "test_best": (boolean, "true or false", None, "true or false", True),
    "torch_threads": (integer, "an integer", lambda v: v >= 1, "an integer >= 1 (or null)", True),
    "flush_denormal": (boolean, "true or false", None, "true or false", True),
}


def check_config(cfg: DictConfig) -> None:
    """Reject values of the wrong type or range with one line naming the key, before any data is loaded."""
    check_values(cfg, CONFIG_RULES)
    check_root(cfg.data.root)
    if OmegaConf.select(cfg, "model.fast_step", default=False):
        if OmegaConf.select(cfg, "trainer.gradient_clip_val", default=None):
            raise FmnistError(
                "trainer.gradient_clip_val does not apply to the fast path (trainer=gpu_fast steps the "
                "optimizer itself): drop it, or train with trainer=gpu"
            )
        precision = str(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
        accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
        if precision not in ("32-true", "32") and not (precision == "bf16-mixed" and accelerator == "cpu"):
            # On a GPU the chunk's batches replay one CUDA graph, which would capture autocast's weight casts
            # once; on the CPU the step clears autocast's cache after each optimizer step.
            raise FmnistError(
                f"trainer.precision={precision} does not apply to the fast path on this accelerator "
                f"({accelerator}): use 32-true, bf16-mixed with trainer=cpu_fast, or train with trainer=gpu_bf16"
            )
        if OmegaConf.select(cfg, "callbacks.ema", default=None):
            # Lightning's weight averaging updates after each Lightning step: once per chunk of batches here.
            raise FmnistError(
                "callbacks.ema does not apply to the fast path, whose step holds many optimizer steps: drop "
                "it (~callbacks.ema), or train with trainer=gpu_bf16 / trainer=gpu / trainer=cpu"
            )
    elif (OmegaConf.select(cfg, "data.batches_per_step", default=1) or 1) > 1:
        raise FmnistError(
            f"data.batches_per_step={cfg.data.batches_per_step} needs the fast path's training step: train with "
            "trainer=gpu_fast or trainer=cpu_fast, or drop it"
        )
    no_end = all(
        OmegaConf.select(cfg, f"trainer.{key}", default=-1) in (-1, None) for key in ("max_epochs", "max_steps")
    )
    if OmegaConf.select(cfg, "model.lr_schedule", default=False) and no_end:
        raise FmnistError("model.lr_schedule=true needs a last step: set trainer.max_epochs or trainer.max_steps")
    if OmegaConf.select(cfg, "data.device_resident", default=False) and OmegaConf.select(cfg, "data.num_workers"):
        raise FmnistError("data.num_workers must be 0 with data.device_resident=true (the splits are on the device)")
    every, epochs = (OmegaConf.select(cfg, f"trainer.{key}") for key in ("check_val_every_n_epoch", "max_epochs"))
    if every and epochs and epochs != -1 and every > epochs:
        raise FmnistError(
            f"trainer.check_val_every_n_epoch={every} is more than trainer.max_epochs={epochs}: no "
            "epoch would be validated and no best checkpoint kept. Fix: lower "
            "trainer.check_val_every_n_epoch"
        )
    check_accelerator(cfg)


def check_accelerator(cfg: DictConfig) -> None:
    """trainer.accelerator must name one of Lightning's accelerators that this machine has, with devices it has."""
    name, devices = OmegaConf.select(cfg, "trainer.accelerator"), OmegaConf.select(cfg, "trainer.devices")
    known = sorted(AcceleratorRegistry.available_accelerators())
    if name not in (*known, "gpu", "auto", None):
        raise FmnistError(
            f"trainer.accelerator={name} is not one of Lightning's accelerators: must be auto, gpu or "
            f"{', '.join(known)}"
        )
    candidates = {"gpu": ("cuda", "mps"), "auto": ("cuda", "mps", "cpu"), None: ("cuda", "mps", "cpu")}
    candidates = candidates.get(name, (name,))
    available = [n for n in candidates if AcceleratorRegistry[n]["accelerator"].is_available()]
    if not available:
        what = {"gpu": "GPU", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)"}.get(name, name.upper())
        raise FmnistError(
            f"trainer.accelerator={name}: this machine has no {what} that torch can use. Fix: train on "
            "the CPU with trainer.accelerator=cpu (trainer=cpu_fast in place of trainer=gpu_fast, "
            "trainer=ddp_cpu in place of trainer=ddp)"
        )
    if devices == "auto":
        return
    try:  # Lightning's own check of the devices against the machine
        AcceleratorRegistry[available[0]]["accelerator"].parse_devices(
            OmegaConf.to_container(devices) if isinstance(devices, ListConfig) else devices
        )
    except (MisconfigurationException, TypeError, ValueError) as error:
        raise FmnistError(
            f"trainer.devices={shown(devices)} cannot run on {available[0]} here: "
            f"{' '.join(str(error).split())} Fix: trainer.devices=1, or auto"
        ) from None


def check_splits(cfg: DictConfig, model: L.LightningModule) -> None:
    """Refuse splits that training cannot use, from the image counts in the data's headers (no image is read)."""
    data, trainer = cfg.data, cfg.trainer
    n_images = count_images(data.root, train=True)
    n_val = validation_size(n_images, data.val_fraction)
    n_train = n_images - n_val
    if n_val == 0:
        raise FmnistError(
            f"data.val_fraction={data.val_fraction} leaves no validation image ({n_images:,} x "
            f"{data.val_fraction} rounds to 0), so no best checkpoint could be chosen. Fix: "
            f"data.val_fraction={1 / n_images:.2g} or more"
        )
    if n_train < data.batch_size:
        raise FmnistError(
            f"data.batch_size={data.batch_size} is larger than the training split: "
            f"data.val_fraction={data.val_fraction} leaves {n_train:,} of the {n_images:,} training "
            "images. Fix: lower data.batch_size or data.val_fraction"
        )
    if n_train % data.batch_size == 1 and any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()):
        raise FmnistError(
            f"data.batch_size={data.batch_size} leaves a last training batch of 1 image "
            f"({n_train:,} = {n_train // data.batch_size:,} x {data.batch_size} + 1), which "
            f"{type(model).__name__}'s BatchNorm cannot train on. Fix: choose another data.batch_size"
        )
    per_step = data.batch_size * (OmegaConf.select(cfg, "data.batches_per_step") or 1)
    eval_batch = OmegaConf.select(cfg, "data.eval_batch_size") or data.batch_size
    splits = {"train": (n_train, per_step), "val": (n_val, eval_batch)}
    if cfg.get("test", True):
        splits["test"] = (count_images(data.root, train=False), eval_batch)
    for split, (n, batch) in splits.items():
        limit, batches = trainer.get(f"limit_{split}_batches"), math.ceil(n / batch)
        if isinstance(limit, float) and int(batches * limit) == 0:  # Lightning rounds the share down
            name = {"train": "training", "val": "validation"}.get(split, split)
            raise FmnistError(
                f"trainer.limit_{split}_batches={limit} leaves no {name} batch ({batches:,} batches x "
                f"{limit} < 1). Fix: trainer.limit_{split}_batches=1 (an integer counts batches), or a "
                "larger share"
            )


MIN_FREE_BYTES = 100 * 2**20  # a run's checkpoints, event files and reports (the BiLSTM's checkpoints: 32 MB)


def check_output_dir(path: Path) -> None:
    """Fail now, naming the folder, if the run could not write its results there."""
    check_output_folder(path, key="hydra.run.dir")
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise FmnistError(
            f"the output folder {path} has {free / 2**20:.0f} MiB free, a run needs at least "
            f"{MIN_FREE_BYTES // 2**20} MiB. Fix: free some space or choose another folder with "
            "hydra.run.dir=PATH"
        )
