"""Any picture as a Fashion-MNIST image: how `predict`, the web page and the garment gate's test images are prepared.

Fashion-MNIST was made from shop photos: grayscale, inverted (light garment on black), cropped to the
garment, fitted into 28x28 keeping the aspect ratio, centred. `to_fashion_mnist` does the same to any image.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps


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
