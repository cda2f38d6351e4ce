"""The study's recurrent stack with gated cells: its first next step, LSTM or GRU instead of SimpleRNN.

Rows as a 28-step sequence through 256, 128 and 64 units (the last returns its final state), BatchNorm,
Dense 10: the SimpleRNN network (fmnist/models/rnn.py) with LSTM or GRU cells (tanh, Keras's
initialisers, one bias per layer).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fmnist.models.base import FashionClassifier
from fmnist.models.layers import KerasRecurrent, batch_norm, glorot_


class RecurrentStack(FashionClassifier):
    """Stacked recurrent layers of `units` over the image rows -> BatchNorm -> Dense(10); `cell` is set by
    the subclass. Recipe (fmnist/conf/model/lstm.yaml, gru.yaml): Keras Adam, batch 64, 20 epochs."""

    cell: str
    default_optimizer = {"_target_": "fmnist.models.optim.KerasAdam", "lr": 1e-3}

    def __init__(self, optimizer=None, units: Sequence[int] = (256, 128, 64), **base_options):
        super().__init__(optimizer, **base_options)
        if len(units) != 3 or any(type(u) is not int or u < 1 for u in units):
            raise ValueError(f"units must be a list of 3 positive integers (the study's three layers), not {units}")
        sizes = [28, *units]
        layers = [
            KerasRecurrent(self.cell, sizes[i], sizes[i + 1], return_sequences=i < len(units) - 1)
            for i in range(len(units))
        ]
        self.features = nn.Sequential(
            nn.Flatten(1, 2),  # (B, 1, 28, 28) -> (B, 28 steps, 28 features)
            *layers,
            batch_norm(units[-1]),
        )
        self.classifier = glorot_(nn.Linear(units[-1], 10))


class StackedLSTM(RecurrentStack):
    """LSTM(256, seq) -> LSTM(128, seq) -> LSTM(64) -> BN -> Dense(10): 539,274 parameters (Keras count)."""

    cell = "lstm"


class StackedGRU(RecurrentStack):
    """GRU(256, seq) -> GRU(128, seq) -> GRU(64) -> BN -> Dense(10): 404,682 parameters (Keras count, one bias
    per layer: Keras's reset_after GRU would add 1,344 recurrent biases)."""

    cell = "gru"
