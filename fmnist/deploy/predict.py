"""Classifying ordinary image files with a trained network (the logic of `fmnist.predict`).

Each image is prepared the way Fashion-MNIST was made: grayscale, inverted when its background is
light (shop photos), cropped to the garment, fitted into 28x28 keeping the aspect ratio, centred,
scaled to [0, 1]. Each prediction says whether the input looks like a garment at all (`not_garment`, from
the checkpoint's garment gate, fmnist/models/gate.py) apart from whether the network hesitates between
classes (`unsure`). Writes `predictions.csv` and `predictions.json`; unreadable files get an error row.
Files are decoded one at a time, with a pixel limit, and classified `batch_size` at a time.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from fmnist.data.idx import CLASS_NAMES
from fmnist.data.photos import to_fashion_mnist
from fmnist.models.checkpoint import load_model
from fmnist.models.gate import KEEP, Gate, NotANumber, gate_for, network_outputs, verdicts
from fmnist.utils.checks import (
    DATA_RULES,
    boolean,
    check_new_files,
    check_output_folder,
    check_values,
    integer,
    number,
    text,
)
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import write_text

RULES = {
    "ckpt_path": (text, "a file name", None, "a checkpoint file, e.g. outputs/cnn/<run>/checkpoints/last.ckpt", False),
    "inputs": (text, "a file or folder name", None, "an image file or a folder of them", False),
    "top_k": (integer, "an integer", lambda v: v >= 1, "an integer >= 1", False),
    "batch_size": (integer, "an integer", lambda v: v >= 1, "an integer >= 1", False),
    "output_dir": (text, "a folder", None, "a folder", False),
    "overwrite": (boolean, "true or false", None, "true or false", False),
    "min_confidence": (number, "a number", lambda v: 0 <= v <= 1, "a number from 0 to 1", False),
    "gate": (boolean, "true or false", None, "true or false", False),
    **DATA_RULES,
}
UNSURE = "unsure between classes: the top class is below min_confidence"
NOT_GARMENT = "not a garment, or not like Fashion-MNIST"
OUTPUTS = ("predictions.csv", "predictions.json")
# Formats whose decoders are plain Pillow code (no Ghostscript for EPS and the like: a file never picks a program).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
MAX_PIXELS = 50_000_000  # a 48-megapixel photo fits; a decompression bomb (tiny file, huge image) does not
NOT_A_NUMBER = "the model's output is not a number (NaN or inf): the checkpoint's weights are broken"


def list_inputs(inputs: str) -> list[Path]:
    """The file itself, or every non-hidden file in the folder (sorted, recursively)."""
    path = Path(inputs)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise FmnistError(f"no files in {path}: give an image file or a folder of images")
        return files
    raise FmnistError(f"inputs={inputs} does not exist")


def load_image(path: Path, max_pixels: int = MAX_PIXELS, prepare=to_fashion_mnist):
    """Read one file and return `prepare(the decoded image)` (by default the network's input); raises ValueError
    with a short reason when it can't.

    An image of more than `max_pixels` is refused from its header, before anything is decoded; a JPEG is
    decoded at the smallest scale of at least 1024 pixels a side that its format offers (the garment ends up
    28x28 anyway)."""
    try:
        if path.stat().st_size == 0:
            raise ValueError("empty (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels, below Pillow's, decides
            image = Image.open(path, formats=FORMATS)
        with image:
            if image.width * image.height > max_pixels:  # the header alone: nothing is decoded yet
                raise ValueError(
                    f"too large: {image.width}x{image.height} pixels, more than the "
                    f"{max_pixels:,} fmnist decodes (a decompression bomb?)"
                )
            if image.format == "JPEG":
                image.draft(image.mode, (1024, 1024))
            image.load()
            return prepare(image)
    except Image.DecompressionBombError:
        raise ValueError(
            f"too large: more than the {max_pixels:,} pixels fmnist decodes (a decompression bomb?)"
        ) from None
    except UnidentifiedImageError:
        raise ValueError(f"not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image") from None
    except (OSError, SyntaxError) as error:  # truncated or damaged files (Pillow's PNG chunk errors: SyntaxError)
        raise ValueError(f"unreadable image: {error}") from None


@torch.inference_mode()
def predict_files(
    model, files: list[Path], top_k: int = 3, batch_size: int = 256, gate: Gate | None = None
) -> list[dict]:
    """One `{"file", "top": [{"class", "prob"}, ...]}` or `{"file", "error"}` per file, in the order of `files`.

    With a `gate`, the probabilities are calibrated (temperature scaling) and each row also has its
    `garment_score` (0 to 1: the share of validation garments less garment-like) and `not_garment`.
    At most `batch_size` prepared images are held and classified at once.
    """
    results = []
    for start in range(0, len(files), batch_size):
        rows = [{"file": str(path)} for path in files[start : start + batch_size]]
        images, read = [], []
        for row in rows:
            try:
                images.append(load_image(Path(row["file"])))
                read.append(row)
            except ValueError as error:
                row["error"] = str(error)
        if images:
            embeddings, logits = network_outputs(model, torch.stack(images), batch_size)
            probs, likeness, not_garment = verdicts(gate, embeddings, logits)
            top = probs.topk(min(top_k, len(CLASS_NAMES)), dim=1)
            finite = (probs.isfinite().all(dim=1) & embeddings.isfinite().all(dim=1)).tolist()
            for i, (row, ok) in enumerate(zip(read, finite, strict=True)):
                if not ok:
                    row["error"] = NOT_A_NUMBER
                    continue
                row["top"] = [
                    {"class": CLASS_NAMES[c], "prob": round(p, 4)}
                    for p, c in zip(top.values[i].tolist(), top.indices[i].tolist(), strict=True)
                ]
                if gate is not None:
                    row["garment_score"] = round(float(likeness[i]), 4)
                    row["not_garment"] = bool(not_garment[i])
        results += rows
    return results


def mark_unsure(results: list[dict], min_confidence: float) -> int:
    """Flag (`"unsure": true`) the predictions whose top class has a probability below `min_confidence`:
    a landscape photo still gets a class, and the flag says not to trust it. Returns how many."""
    for r in results:
        if "top" in r:
            r["unsure"] = r["top"][0]["prob"] < min_confidence
    return sum(bool(r.get("unsure")) for r in results)


def write_predictions(results: list[dict], output_dir: Path, top_k: int) -> None:
    """predictions.json (the list as is) and predictions.csv (one row per file)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: a NaN would make the file invalid JSON; predict_files turns it into an error row.
    write_text(output_dir / "predictions.json", json.dumps(results, indent=2, allow_nan=False) + "\n")
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    flags = ("garment_score", "not_garment", "unsure")
    header = ["file", *[f"{kind}{i}" for i in range(1, top_k + 1) for kind in ("class", "prob")], *flags, "error"]
    writer.writerow(header)
    for r in results:
        cells = [x for t in r.get("top", []) for x in (t["class"], t["prob"])]
        marks = ["" if name not in r else str(r[name]).lower() for name in flags]
        writer.writerow([r["file"], *cells, *[""] * (2 * top_k - len(cells)), *marks, r.get("error", "")])
    write_text(output_dir / "predictions.csv", table.getvalue())


def printable(name: str) -> str:
    """`name` with newlines, tabs and other control characters escaped, so that a table row stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def print_table(results: list[dict]) -> None:
    """Print one line per file: its top classes and their probabilities (or its error), and its flags."""
    names = [printable(r["file"]) for r in results]
    width = max(map(len, names))
    for name, r in zip(names, results, strict=False):
        row = r.get("error") and f"error: {r['error']}" or "  ".join(f"{t['class']} {t['prob']:.1%}" for t in r["top"])
        flags = [f"{NOT_GARMENT}: garment score {r['garment_score']:.3f}"] if r.get("not_garment") else []
        flags += [UNSURE] if r.get("unsure") else []
        print(f"{name:<{width}}  {printable(row)}" + "".join(f"  ({flag})" for flag in flags))


def checkpoint_gate(model, cfg: DictConfig) -> Gate | None:
    """The checkpoint's garment gate (`predict` and `serve`); None, with a note, when the network's outputs are not
    numbers (its rows then say so). A gate that cannot be fitted (no Fashion-MNIST here) is an error that names
    gate=false."""
    try:
        return gate_for(model, cfg.ckpt_path, hydra.utils.instantiate(cfg.data))
    except NotANumber as error:
        print(f"note: no garment gate: {error}")
        return None
    except FmnistError as error:
        raise FmnistError(
            f"{error} (the checkpoint's garment gate is fitted on Fashion-MNIST the first time; "
            "gate=false classifies without it)"
        ) from None


def predict(cfg: DictConfig) -> list[dict]:
    """Check everything, then classify the files and write predictions.csv and predictions.json."""
    check_values(cfg, RULES)
    files = list_inputs(str(cfg.inputs))
    model = load_model(cfg.ckpt_path)
    output_dir = Path(cfg.output_dir)
    check_output_folder(output_dir)
    check_new_files([output_dir / name for name in OUTPUTS], cfg.overwrite)
    gate = checkpoint_gate(model, cfg) if cfg.gate else None
    results = predict_files(model, files, cfg.top_k, cfg.batch_size, gate)
    unsure = mark_unsure(results, cfg.min_confidence)
    print_table(results)
    write_predictions(results, output_dir, min(cfg.top_k, len(CLASS_NAMES)))
    not_garments = sum(bool(r.get("not_garment")) for r in results)
    flagged = f"; {not_garments} not garments (garment score below {1 - KEEP:.2f})" if not_garments else ""
    flagged += f"; {unsure} unsure (top class below min_confidence={cfg.min_confidence:g})" if unsure else ""
    print(f"wrote {output_dir / OUTPUTS[0]} and {OUTPUTS[1]}{flagged}")
    if all(r.get("error") == NOT_A_NUMBER for r in results):
        raise FmnistError(
            f"no prediction for the {len(files)} input file(s): {NOT_A_NUMBER}. Fix: use a "
            "checkpoint from before the run diverged"
        )
    if all("error" in r for r in results):
        raise FmnistError(f"none of the {len(files)} input file(s) could be read as an image")
    return results
