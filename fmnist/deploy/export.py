"""Exporting a trained network to ONNX or TorchScript and checking the copy (the logic of `fmnist.export`).

The exported model maps images (B, 1, 28, 28) in [0, 1] to logits (B, 10), any batch size. After
writing, it checks itself: on a test batch its outputs must match PyTorch's within `tolerance`
(ONNX is run with onnxruntime).
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from fmnist.data.datamodule import to_unit_float
from fmnist.data.idx import CLASS_NAMES
from fmnist.models.checkpoint import load_model
from fmnist.utils.checks import DATA_RULES, boolean, check_new_files, check_output_folder, check_values, number, text
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import write_atomically, write_json

SUFFIX = {"onnx": ".onnx", "torchscript": ".ts.pt"}
RULES = {
    "ckpt_path": (text, "a file name", None, "a checkpoint file, e.g. outputs/cnn/<run>/checkpoints/last.ckpt", False),
    "format": (lambda v: v in SUFFIX, "onnx or torchscript", None, "onnx or torchscript", False),
    "output": (text, "a file name", None, "a file name (or null: beside the checkpoint)", True),
    "tolerance": (number, "a number", lambda v: v >= 0, "a number >= 0", False),
    "overwrite": (boolean, "true or false", None, "true or false", False),
    **DATA_RULES,
}


def check_batch(cfg: DictConfig) -> torch.Tensor:
    """32 real test images when the data can be found, else 32 random images."""
    try:
        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.prepare_data()
        datamodule.setup("test")
        return to_unit_float(datamodule.test_set.images[:32].clone())
    except FmnistError:
        return torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Write `model` to `path` as ONNX with a dynamic batch size; FmnistError if the export fails."""
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise FmnistError("format=onnx needs the onnx extra: pip install -e '.[onnx]'") from None
    log = io.StringIO()  # the exporter narrates every graph pass; keep it for errors only
    logging.disable(logging.WARNING)  # and logs hundreds of lines ("Skipping constant folding ...")
    try:
        with warnings.catch_warnings(), redirect_stdout(log), redirect_stderr(log):
            warnings.simplefilter("ignore")
            model.to_onnx(
                str(path),
                example,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}},
                dynamo=True,
                external_data=False,
            )
    except Exception as error:  # noqa: BLE001
        raise FmnistError(f"ONNX export failed: {error}\n{log.getvalue()[-2000:]}") from None
    finally:
        logging.disable(logging.NOTSET)


def run_onnx(path: Path, images: torch.Tensor) -> torch.Tensor:
    """The logits of the ONNX file at `path` for `images`, run with onnxruntime on the CPU."""
    try:
        import onnxruntime
    except ImportError:
        raise FmnistError("checking the ONNX file needs onnxruntime: pip install -e '.[onnx]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])


def export(cfg: DictConfig) -> dict:
    """Write the exported model, check it, and return the check's figures."""
    check_values(cfg, RULES)  # tolerance too: a bad one must not fail after the file is written
    model = load_model(cfg.ckpt_path)
    ckpt = Path(cfg.ckpt_path)
    path = Path(cfg.output) if cfg.output else ckpt.with_suffix(SUFFIX[cfg.format])
    if path.resolve() == ckpt.resolve():
        raise FmnistError(
            f"{path} is the checkpoint being exported: the export would replace it. Fix: choose another output=PATH"
        )
    card = path.with_name(path.name + ".json")
    check_output_folder(path.parent, key="output")
    check_new_files([path, card], cfg.overwrite, key="output")
    images = check_batch(cfg)
    with torch.inference_mode():
        expected = model(images)
    with tempfile.TemporaryDirectory() as folder:  # the exporters write by path: a new file of their own
        made = Path(folder) / path.name
        if cfg.format == "onnx":
            export_onnx(model, images[:2], made)
            got = run_onnx(made, images)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.to_torchscript(str(made), method="trace", example_inputs=images[:2])
                got = torch.jit.load(str(made))(images).detach()
        write_atomically(path, made.read_bytes())
    difference = float((got - expected).abs().max())
    check = {
        "file": str(path),
        "format": cfg.format,
        "batch": len(images),
        "max_abs_diff": difference,
        "tolerance": cfg.tolerance,
        "ok": difference <= cfg.tolerance,
    }
    print(json.dumps(check, indent=2))
    if not check["ok"]:
        raise FmnistError(f"the exported model differs from PyTorch by {difference:.2e} > {cfg.tolerance}")
    write_json(card, model_card(model, path, cfg.format))
    print(f"wrote {card}: {EXPECTS}")
    return check


EXPECTS = (
    "input 'images' float32 (batch, 1, 28, 28) in [0, 1], a light garment on a dark background as in Fashion-MNIST; "
    "output 'logits' (batch, 10) in the classes' order, softmax gives probabilities"
)


def model_card(model: torch.nn.Module, path: Path, format: str) -> dict:
    """What the exported file expects and gives, written beside it as `<file>.json`."""
    return {
        "file": path.name,
        "format": format,
        "model": type(model).__name__,
        "input": {
            "name": "images",
            "dtype": "float32",
            "shape": ["batch", 1, 28, 28],
            "range": [0.0, 1.0],
            "polarity": "light garment on a dark background (Fashion-MNIST); invert a shop photo",
        },
        "output": {"name": "logits", "shape": ["batch", 10], "note": "logits: softmax gives probabilities"},
        "classes": list(CLASS_NAMES),
        "preprocess": "python -m fmnist.predict prepares photos the same way (grayscale, invert, crop, 28x28)",
    }
