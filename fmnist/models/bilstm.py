"""The study's bidirectional LSTM (Model C): two stacked BiLSTMs and a dense head, 1,340,042 params."""

from __future__ import annotations

from torch import nn

from fmnist.models.base import FashionClassifier
from fmnist.models.layers import KerasRecurrent, glorot_


class BiLSTM(FashionClassifier):
    """Keras: Bidirectional(LSTM(256, seq)) -> Bidirectional(LSTM(128)) -> Dense(256, relu) ->
    Dropout -> Dense(128, relu) -> Dropout -> Dense(10). Study recipe: Adam, batch 64, 20 epochs."""

    default_optimizer = {"_target_": "fmnist.models.optim.KerasAdam", "lr": 1e-3}

    def __init__(self, optimizer=None, dropout: float = 0.3, **base_options):
        super().__init__(optimizer, **base_options)
        self.features = nn.Sequential(
            nn.Flatten(1, 2),  # (B, 1, 28, 28) -> (B, 28 steps, 28 features)
            KerasRecurrent("lstm", 28, 256, return_sequences=True, bidirectional=True),
            KerasRecurrent("lstm", 512, 128, bidirectional=True),
            glorot_(nn.Linear(256, 256)),
            nn.ReLU(),
            nn.Dropout(dropout),
            glorot_(nn.Linear(256, 128)),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.classifier = glorot_(nn.Linear(128, 10))
