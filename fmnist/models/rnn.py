"""The study's recurrent network (Model B): three stacked ReLU SimpleRNNs over image rows, 135,498 params."""

from __future__ import annotations

from torch import nn

from fmnist.models.base import FashionClassifier
from fmnist.models.layers import KerasRecurrent, batch_norm, glorot_


class SimpleRNN(FashionClassifier):
    """Keras: SimpleRNN(256, relu, seq) -> SimpleRNN(128, relu, seq) -> SimpleRNN(64, relu) -> BN
    -> Dense(10), reading the 28 rows as a 28-step sequence. Study recipe: SGD lr 0.01, batch 65,
    25 epochs."""

    default_optimizer = {"_target_": "torch.optim.SGD", "lr": 0.01}

    def __init__(self, optimizer=None, **base_options):
        super().__init__(optimizer, **base_options)
        self.features = nn.Sequential(
            nn.Flatten(1, 2),  # (B, 1, 28, 28) -> (B, 28 steps, 28 features)
            KerasRecurrent("rnn", 28, 256, return_sequences=True, activation="relu"),
            KerasRecurrent("rnn", 256, 128, return_sequences=True, activation="relu"),
            KerasRecurrent("rnn", 128, 64, activation="relu"),
            batch_norm(64),
        )
        self.classifier = glorot_(nn.Linear(64, 10))
