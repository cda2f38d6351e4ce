"""Training-batch augmentation on the device, per sample, with kornia (fmnist/conf/augment/).

Built from plain numbers (a run config never names a class): horizontal flip, random crop of the
zero-padded image (a shift of up to `crop_padding` pixels) and random erasing. Applied by the data
module to training batches after the uint8 -> float step, never to validation, test or prediction.
"""

from __future__ import annotations

from torch import nn

from fmnist.utils.errors import FmnistError

IMAGE_SIZE = (28, 28)


def build_augmentation(flip: float = 0.0, crop_padding: int = 0, erasing: float = 0.0) -> nn.Module | None:
    """kornia's per-sample augmentations for (B, 1, 28, 28) float batches, or None when all are off.

    `flip`: probability of a horizontal flip; `crop_padding`: pixels of zero padding on each side before a
    random 28x28 crop; `erasing`: probability of erasing one random rectangle (2-33 % of the image).
    """
    for name, value, low, high in (
        ("flip", flip, 0, 1),
        ("erasing", erasing, 0, 1),
        ("crop_padding", crop_padding, 0, 14),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise FmnistError(f"data.augment.{name} must be a number from {low} to {high}, not {value!r}")
    if isinstance(crop_padding, float) and not crop_padding.is_integer():
        raise FmnistError(f"data.augment.crop_padding must be a whole number of pixels, not {crop_padding!r}")
    import kornia.augmentation as K  # here: the study's recipes (augment=none) run without kornia installed

    steps: list[nn.Module] = []
    if flip:
        steps.append(K.RandomHorizontalFlip(p=flip))
    if crop_padding:
        steps.append(K.RandomCrop(IMAGE_SIZE, padding=int(crop_padding), p=1.0))
    if erasing:
        steps.append(K.RandomErasing(p=erasing, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0))
    return nn.Sequential(*steps) if steps else None
