"""The study's three networks, the speedrun's and those beyond the study, as LightningModules sharing one base
class, and their registry."""

from __future__ import annotations

from fmnist.models.attention import PatchTransformer
from fmnist.models.base import FashionClassifier
from fmnist.models.bilstm import BiLSTM
from fmnist.models.cnn import CNN
from fmnist.models.recurrent import StackedGRU, StackedLSTM
from fmnist.models.resnet import PreActWideResNet
from fmnist.models.rnn import SimpleRNN
from fmnist.models.speednet import SpeedNet

# The only model classes fmnist builds from a file (fmnist/models/trust.py): checkpoints store these names.
MODELS: dict[str, type[FashionClassifier]] = {
    "CNN": CNN,
    "SimpleRNN": SimpleRNN,
    "BiLSTM": BiLSTM,
    "SpeedNet": SpeedNet,
    "StackedLSTM": StackedLSTM,
    "StackedGRU": StackedGRU,
    "PatchTransformer": PatchTransformer,
    "PreActWideResNet": PreActWideResNet,
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

__all__ = [
    "FashionClassifier",
    "CNN",
    "SimpleRNN",
    "BiLSTM",
    "SpeedNet",
    "StackedLSTM",
    "StackedGRU",
    "PatchTransformer",
    "PreActWideResNet",
    "MODELS",
    "MODEL_NAMES",
]
