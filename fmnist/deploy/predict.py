"""Classifying ordinary image files with a trained network (the logic of `fmnist.predict`).

Each image is prepared the way Fashion-MNIST was made: grayscale, inverted when its background is
light (shop photos), cropped to the garment, fitted into 28x28 keeping the aspect ratio, centred,
scaled to [0, 1]. Writes `predictions.csv` and `predictions.json`; unreadable files get an error row.
Files are decoded one at a time, with a pixel limit, and classified `batch_size` at a time.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist.data.idx import CLASS_NAMES
from fmnist.models.checkpoint import load_model
from fmnist.utils.checks import boolean, check_new_files, check_output_folder, check_values, integer, number, text
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
}
UNSURE = "unsure: unlike every garment the network knows (not a garment, or not Fashion-MNIST-like)"
OUTPUTS = ("predictions.csv", "predictions.json")
# Formats whose decoders are plain Pillow code (no Ghostscript for EPS and the like: a file never picks a program).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
MAX_PIXELS = 50_000_000  # a 48-megapixel photo fits; a decompression bomb (tiny file, huge image) does not
NOT_A_NUMBER = "the model's output is not a number (NaN or inf): the checkpoint's weights are broken"


def to_fashion_mnist(image: Image.Image) -> torch.Tensor:
    """Any PIL image -> float tensor (1, 28, 28) in [0, 1], light garment on black like Fashion-MNIST."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I") or image.mode == "F":
        gray = _high_depth_gray(image)
    else:
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent = shop-white
            image = Image.alpha_composite(background, rgba)
        gray = np.asarray(image.convert("L"), dtype=np.float32)
    background = float(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))
    if background > 127:  # light background: invert so the garment is the bright part
        gray, background = 255 - gray, 255 - background
    gray = np.clip(gray - background, 0, None)
    peak = gray.max()
    if peak <= 0:
        raise ValueError("the image is blank: no garment to see")
    rows, cols = np.nonzero(gray > 0.1 * peak)
    crop = gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] * (255.0 / peak)
    fitted = ImageOps.contain(Image.fromarray(crop.astype(np.uint8)), (28, 28), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (28, 28), 0)
    canvas.paste(fitted, ((28 - fitted.width) // 2, (28 - fitted.height) // 2))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).unsqueeze(0)


def _high_depth_gray(image: Image.Image) -> np.ndarray:
    """16-bit (I;16, I) or float (F) gray as 0..255 floats; Pillow's convert("L") would clip them to white."""
    values = np.asarray(image, dtype=np.float32)
    if not np.isfinite(values).all():  # float TIFFs: inf would wash the garment out, NaN would empty it
        raise ValueError("the image has pixels that are NaN or infinite")
    if image.mode == "F" and values.max(initial=0) <= 1:
        return values * 255  # floats in [0, 1]
    scale = 1.0 if image.mode == "F" else 257.0  # 65535 / 255
    return np.clip(values / scale, 0, 255)


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
def predict_files(model, files: list[Path], top_k: int = 3, batch_size: int = 256) -> list[dict]:
    """One `{"file", "top": [{"class", "prob"}, ...]}` or `{"file", "error"}` per file, in the order of `files`.

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
            probs = model(torch.stack(images)).softmax(dim=1)
            top = probs.topk(min(top_k, len(CLASS_NAMES)), dim=1)
            finite = probs.isfinite().all(dim=1).tolist()
            for row, ok, values, indices in zip(read, finite, top.values.tolist(), top.indices.tolist(), strict=False):
                if ok:
                    row["top"] = [
                        {"class": CLASS_NAMES[i], "prob": round(p, 4)} for p, i in zip(values, indices, strict=False)
                    ]
                else:
                    row["error"] = NOT_A_NUMBER
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
    header = ["file", *[f"{kind}{i}" for i in range(1, top_k + 1) for kind in ("class", "prob")], "unsure", "error"]
    writer.writerow(header)
    for r in results:
        cells = [x for t in r.get("top", []) for x in (t["class"], t["prob"])]
        unsure = "" if "unsure" not in r else str(r["unsure"]).lower()
        writer.writerow([r["file"], *cells, *[""] * (2 * top_k - len(cells)), unsure, r.get("error", "")])
    write_text(output_dir / "predictions.csv", table.getvalue())


def printable(name: str) -> str:
    """`name` with newlines, tabs and other control characters escaped, so that a table row stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def print_table(results: list[dict]) -> None:
    """Print one line per file: its top classes and their probabilities (or its error), and if unsure."""
    names = [printable(r["file"]) for r in results]
    width = max(map(len, names))
    for name, r in zip(names, results, strict=False):
        row = r.get("error") and f"error: {r['error']}" or "  ".join(f"{t['class']} {t['prob']:.1%}" for t in r["top"])
        print(f"{name:<{width}}  {printable(row)}" + (f"  ({UNSURE})" if r.get("unsure") else ""))


def predict(cfg: DictConfig) -> list[dict]:
    """Check everything, then classify the files and write predictions.csv and predictions.json."""
    check_values(cfg, RULES)
    files = list_inputs(str(cfg.inputs))
    model = load_model(cfg.ckpt_path)
    output_dir = Path(cfg.output_dir)
    check_output_folder(output_dir)
    check_new_files([output_dir / name for name in OUTPUTS], cfg.overwrite)
    results = predict_files(model, files, cfg.top_k, cfg.batch_size)
    unsure = mark_unsure(results, cfg.min_confidence)
    print_table(results)
    write_predictions(results, output_dir, min(cfg.top_k, len(CLASS_NAMES)))
    flagged = f"; {unsure} unsure (top class below min_confidence={cfg.min_confidence:g})" if unsure else ""
    print(f"wrote {output_dir / OUTPUTS[0]} and {OUTPUTS[1]}{flagged}")
    if all(r.get("error") == NOT_A_NUMBER for r in results):
        raise FmnistError(
            f"no prediction for the {len(files)} input file(s): {NOT_A_NUMBER}. Fix: use a "
            "checkpoint from before the run diverged"
        )
    if all("error" in r for r in results):
        raise FmnistError(f"none of the {len(files)} input file(s) could be read as an image")
    return results
