"""Keras-faithful building blocks: initialisers, BatchNorm settings and recurrent layers.

Keras defaults reproduced here (docs/RESULTS.md has the study): glorot-uniform kernels and zero biases, orthogonal
recurrent kernels, LSTM forget-gate bias 1, ONE bias per recurrent layer, BatchNormalization with
momentum 0.99 / epsilon 1e-3. (Keras's GRU, reset_after=True like torch's, has a second, recurrent
bias; here it is kept at zero as for the other cells, so every recurrent layer has one bias.)
"""

from __future__ import annotations

import torch
from torch import nn

BN_MOMENTUM = 0.01  # Keras momentum 0.99 weighs the running stats the other way round
BN_EPS = 1e-3


def batch_norm(num_features: int, dims: int = 1) -> nn.Module:
    """BatchNorm with Keras's momentum and epsilon; `dims` 2 for feature maps, 1 for vectors."""
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)


def glorot_(module: nn.Module) -> nn.Module:
    """Keras Dense/Conv2D initialisation on every Linear and Conv2d inside `module`."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


class KerasRecurrent(nn.Module):
    """A Keras SimpleRNN, LSTM or GRU layer (optionally Bidirectional) on batch-first sequences.

    Returns the whole output sequence when `return_sequences`, else the final state; for a
    bidirectional layer that is [forward final state, backward final state] taken from `h_n`
    (the backward direction's final state is its output at t=0, not `output[:, -1]`).
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        units: int,
        return_sequences: bool = False,
        bidirectional: bool = False,
        activation: str = "tanh",
    ):
        super().__init__()
        if cell == "lstm":
            self.rnn = nn.LSTM(input_size, units, batch_first=True, bidirectional=bidirectional)
        elif cell == "gru":
            self.rnn = nn.GRU(input_size, units, batch_first=True, bidirectional=bidirectional)
        elif cell == "rnn":
            self.rnn = nn.RNN(input_size, units, nonlinearity=activation, batch_first=True, bidirectional=bidirectional)
        else:
            raise ValueError(f"cell must be 'rnn', 'lstm' or 'gru', not {cell!r}")
        self.cell, self.units, self.return_sequences = cell, units, return_sequences
        self.bidirectional = bidirectional
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, param in self.rnn.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(param)
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(param)
            elif name.startswith("bias_ih"):
                nn.init.zeros_(param)
                if self.cell == "lstm":  # unit_forget_bias: gates are ordered i, f, g, o
                    with torch.no_grad():
                        param[self.units : 2 * self.units].fill_(1.0)
            elif name.startswith("bias_hh"):
                # Keras has one bias: keep torch's second one at zero and out of training.
                nn.init.zeros_(param)
                param.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, state = self.rnn(x)
        if self.return_sequences:
            return output
        h_n = state[0] if self.cell == "lstm" else state
        if self.bidirectional:
            return torch.cat([h_n[-2], h_n[-1]], dim=1)
        return h_n[-1]

    def extra_repr(self) -> str:
        return f"return_sequences={self.return_sequences}"
