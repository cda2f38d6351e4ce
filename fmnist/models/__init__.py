"""The study's three networks as LightningModules sharing one base class."""

from fmnist.models.base import FashionClassifier
from fmnist.models.bilstm import BiLSTM
from fmnist.models.cnn import CNN
from fmnist.models.rnn import SimpleRNN

__all__ = ["FashionClassifier", "CNN", "SimpleRNN", "BiLSTM"]
