"""The speedrun's network: airbench's design (Keller Jordan's CIFAR-10 speedruns) sized for 28x28x1.

A frozen 2x2 whitening convolution (its filters are the training patches' PCA, computed once from
the first training images), then three groups of [conv, max-pool, BatchNorm, GELU, conv, BatchNorm,
GELU], a global max-pool and a bias-free linear layer whose logits are scaled down. BatchNorm
learns only its shift, as in airbench. docs/SPEEDRUN.md has the recipe and what each part buys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fmnist.models.base import FashionClassifier
from fmnist.utils.errors import FmnistError

PATCH = 2  # the whitening filters' size: 2x2 patches, 4 dimensions, 8 filters (each PCA direction and its negative)
WHITEN_IMAGES = 5000  # the first training images whose patches define the whitening


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1: only the shift is learnt (fewer parameters, as good here)."""

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(channels, momentum=momentum, eps=eps)
        self.weight.requires_grad_(False)


def conv_group(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv 3x3, MaxPool 2x2, BN, GELU, Conv 3x3, BN, GELU (airbench's ConvGroup)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.MaxPool2d(2),
        FrozenScaleBatchNorm(out_channels),
        nn.GELU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        FrozenScaleBatchNorm(out_channels),
        nn.GELU(),
    )


class Scale(nn.Module):
    """Multiplies by a constant: airbench's logit scaling (softer initial predictions)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def whitening_filters(images: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2x2 filters and bias that whiten `images`' patches: `W (x - mean)` has identity covariance
    (up to `eps`) for each patch x. Returns weight (8, 1, 2, 2), the PCA directions and their negatives,
    and the bias (8,) that centres them."""
    x = images.double()
    patches = x.unfold(2, PATCH, 1).unfold(3, PATCH, 1).reshape(-1, PATCH * PATCH)
    mean = patches.mean(0)
    centred = patches - mean
    covariance = centred.T @ centred / len(centred)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp(min=0)[:, None] + eps)
    weight = torch.cat([filters, -filters]).reshape(-1, 1, PATCH, PATCH)
    bias = -(weight.reshape(len(weight), -1) @ mean)
    return weight.float(), bias.float()


class SpeedNet(FashionClassifier):
    """Whitened 2x2 stem, three conv groups (`widths`), global max-pool, linear, logits x `logit_scale`.
    `whiten=false` (an ablation) learns the stem from its default initialisation instead."""

    default_optimizer = {"_target_": "torch.optim.SGD", "lr": 0.2, "momentum": 0.85, "nesterov": True}

    def __init__(
        self,
        optimizer=None,
        widths: Sequence[int] = (32, 64, 128),
        whiten: bool = True,
        whiten_eps: float = 1e-4,
        logit_scale: float = 1 / 9,
        channels_last: bool = True,
        **base_options,
    ):
        super().__init__(optimizer, **base_options)
        self.whiten_eps, self.channels_last, self.whitened = whiten_eps, channels_last, whiten
        self.whiten = nn.Conv2d(1, 2 * PATCH * PATCH, PATCH, bias=True)
        # set from the data in setup() and frozen (its bias keeps learning); whiten=false: an ordinary learnt conv
        self.whiten.weight.requires_grad_(not whiten)
        self.features = nn.Sequential(
            self.whiten,
            nn.GELU(),
            conv_group(2 * PATCH * PATCH, widths[0]),
            conv_group(widths[0], widths[1]),
            conv_group(widths[1], widths[2]),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(widths[2], 10, bias=False), Scale(logit_scale))
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def init_whitening(self, images: torch.Tensor) -> None:
        """Set the stem's filters from uint8 (or [0, 1] float) training images (N, 1, 28, 28)."""
        images = images[:WHITEN_IMAGES].cpu()
        if images.dtype == torch.uint8:
            images = images.float() / 255
        weight, bias = whitening_filters(images, self.whiten_eps)
        with torch.no_grad():
            self.whiten.weight.copy_(weight)
            self.whiten.bias.copy_(bias)

    def setup(self, stage: str) -> None:
        # Before a checkpoint is restored: a resumed run gets its saved filters (the same ones) back.
        if stage != "fit" or not self.whitened:
            return
        train_set = getattr(self.trainer.datamodule, "train_set", None)
        if train_set is None:
            raise FmnistError(
                "SpeedNet computes its whitening from the training split: fit it with fmnist's data module"
            )
        self.init_whitening(train_set.images)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.features(x)
