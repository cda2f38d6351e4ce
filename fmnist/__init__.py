"""fmnist: the Fashion-MNIST study's CNN, SimpleRNN and BiLSTM in PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
