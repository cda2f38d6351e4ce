"""Classify ordinary image files: `python -m fmnist.predict ckpt_path=PATH inputs=FILE_OR_DIR [top_k=3]`.

Each image is prepared the way Fashion-MNIST was made: grayscale, inverted when its background is
light (shop photos), cropped to the garment, fitted into 28x28 keeping the aspect ratio, centred,
scaled to [0, 1]. Writes `predictions.csv` and `predictions.json`; unreadable files get an error row.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist.checkpoints import load_model
from fmnist.data import CLASS_NAMES
from fmnist.errors import FmnistError, exit_on_error


def to_fashion_mnist(image: Image.Image) -> torch.Tensor:
    """Any PIL image -> float tensor (1, 28, 28) in [0, 1], light garment on black like Fashion-MNIST."""
    image = ImageOps.exif_transpose(image)
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
    crop = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1] * (255.0 / peak)
    fitted = ImageOps.contain(Image.fromarray(crop.astype(np.uint8)), (28, 28), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (28, 28), 0)
    canvas.paste(fitted, ((28 - fitted.width) // 2, (28 - fitted.height) // 2))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).unsqueeze(0)


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


def load_image(path: Path) -> torch.Tensor:
    """Read and prepare one file; raises ValueError with a short reason when it can't."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_fashion_mnist(image)
    except UnidentifiedImageError:
        raise ValueError("not an image PIL can read (PNG, JPEG, ...)") from None
    except OSError as error:  # truncated or damaged files
        raise ValueError(f"unreadable image: {error}") from None


@torch.inference_mode()
def predict_files(model, files: list[Path], top_k: int = 3) -> list[dict]:
    """One `{"file", "top": [{"class", "prob"}, ...]}` or `{"file", "error"}` per file."""
    results, batch, batch_files = [], [], []
    for path in files:
        try:
            batch.append(load_image(path))
            batch_files.append(path)
        except ValueError as error:
            results.append({"file": str(path), "error": str(error)})
    if batch:
        probs = model(torch.stack(batch)).softmax(dim=1)
        top = probs.topk(min(top_k, len(CLASS_NAMES)), dim=1)
        for path, values, indices in zip(batch_files, top.values.tolist(), top.indices.tolist()):
            results.append({"file": str(path), "top": [{"class": CLASS_NAMES[i], "prob": round(p, 4)}
                                                       for p, i in zip(values, indices)]})
    order = {str(p): i for i, p in enumerate(files)}
    return sorted(results, key=lambda r: order[r["file"]])


def write_predictions(results: list[dict], output_dir: Path, top_k: int) -> None:
    """predictions.json (the list as is) and predictions.csv (one row per file)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "predictions.json").write_text(json.dumps(results, indent=2) + "\n")
    with open(output_dir / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", *[f"{kind}{i}" for i in range(1, top_k + 1) for kind in ("class", "prob")], "error"])
        for r in results:
            cells = [x for t in r.get("top", []) for x in (t["class"], t["prob"])]
            writer.writerow([r["file"], *cells, *[""] * (2 * top_k - len(cells)), r.get("error", "")])


def print_table(results: list[dict]) -> None:
    width = max(len(r["file"]) for r in results)
    for r in results:
        row = r.get("error") and f"error: {r['error']}" or "  ".join(f"{t['class']} {t['prob']:.1%}" for t in r["top"])
        print(f"{r['file']:<{width}}  {row}")


def predict(cfg: DictConfig) -> list[dict]:
    if cfg.top_k < 1:
        raise FmnistError(f"top_k={cfg.top_k} is out of range: must be an integer >= 1")
    files = list_inputs(str(cfg.inputs))
    model = load_model(cfg.ckpt_path)
    results = predict_files(model, files, cfg.top_k)
    print_table(results)
    write_predictions(results, Path(cfg.output_dir), min(cfg.top_k, len(CLASS_NAMES)))
    if all("error" in r for r in results):
        raise FmnistError(f"none of the {len(files)} input file(s) could be read as an image")
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    exit_on_error(predict, cfg)


if __name__ == "__main__":
    main()
