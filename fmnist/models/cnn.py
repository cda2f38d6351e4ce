"""The study's convolutional network (Model A): six tanh convolutions with BatchNorm, 306,906 params."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fmnist.models.base import FashionClassifier
from fmnist.models.layers import batch_norm, glorot_


def conv_block(in_channels: int, out_channels: int, dropout: float) -> list[nn.Module]:
    """Conv-tanh-BN, Conv-tanh-BN, MaxPool 2x2, Dropout: one stage of the study's CNN."""
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding="same"),
        nn.Tanh(),
        batch_norm(out_channels, 2),
        nn.Conv2d(out_channels, out_channels, 3, padding="same"),
        nn.Tanh(),
        batch_norm(out_channels, 2),
        nn.MaxPool2d(2),
        nn.Dropout(dropout),
    ]


class CNN(FashionClassifier):
    """Keras: 3 x [Conv2D x2 + BN, MaxPool, Dropout] (32/64/128 filters), Dense(16, relu), BN,
    Dropout, Dense(10). Trained in the study with RMSprop lr 1e-4, batch 100, 150 epochs."""

    default_optimizer = {"_target_": "fmnist.models.optim.KerasRMSprop", "lr": 1e-4}

    def __init__(
        self,
        optimizer=None,
        conv_dropout: Sequence[float] = (0.2, 0.3, 0.4),
        dense_dropout: float = 0.5,
        channels_last: bool = True,
        **base_options,
    ):
        super().__init__(optimizer, **base_options)
        # NHWC layout: the same arithmetic, faster convolutions on the CPU (measured in docs/BENCHMARKS.md).
        self.channels_last = channels_last
        self.features = glorot_(
            nn.Sequential(
                *conv_block(1, 32, conv_dropout[0]),
                *conv_block(32, 64, conv_dropout[1]),
                *conv_block(64, 128, conv_dropout[2]),
                nn.Flatten(),
                nn.Linear(128 * 3 * 3, 16),
                nn.ReLU(),
                batch_norm(16),
                nn.Dropout(dense_dropout),
            )
        )
        self.classifier = glorot_(nn.Linear(16, 10))
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.features(x)
