"""The study's three networks and the speedrun's, as LightningModules sharing one base class, and their registry."""

from __future__ import annotations

from fmnist.models.base import FashionClassifier
from fmnist.models.bilstm import BiLSTM
from fmnist.models.cnn import CNN
from fmnist.models.rnn import SimpleRNN
from fmnist.models.speednet import SpeedNet

# The only model classes fmnist builds from a file (fmnist/models/trust.py): checkpoints store these names.
MODELS: dict[str, type[FashionClassifier]] = {
    "CNN": CNN,
    "SimpleRNN": SimpleRNN,
    "BiLSTM": BiLSTM,
    "SpeedNet": SpeedNet,
}
# The same classes by the import paths that run configs (`model._target_`) and earlier checkpoints
# carry; a lookup is string equality against this table, never an import.
MODEL_NAMES: dict[str, type[FashionClassifier]] = {
    **MODELS,
    **{
        name: cls
        for cls in MODELS.values()
        for name in (f"fmnist.models.{cls.__name__}", f"{cls.__module__}.{cls.__qualname__}")
    },
}

__all__ = ["FashionClassifier", "CNN", "SimpleRNN", "BiLSTM", "SpeedNet", "MODELS", "MODEL_NAMES"]
