"""The three networks mirror the study's Keras models: counts, shapes, initialisation, frozen bias."""

import math

import pytest
import torch
from torch import nn

from fmnist.models import CNN, BiLSTM, SimpleRNN, StackedGRU, StackedLSTM
from fmnist.models.layers import KerasRecurrent
from fmnist.models.optim import KerasAdam
from fmnist.models.summary import keras_param_counts, keras_summary_markdown

# (class, trainable, Keras total, embedding width) from the study's Keras summaries
STUDY = [(CNN, 305_978, 306_906, 16), (SimpleRNN, 135_370, 135_498, 64), (BiLSTM, 1_340_042, 1_340_042, 128)]


@pytest.mark.parametrize("cls, trainable, total, _", STUDY)
def test_parameter_counts_equal_the_study(cls, trainable, total, _):
    counts = keras_param_counts(cls())
    assert counts["trainable"] == trainable
    assert counts["total"] == total


@pytest.mark.parametrize("cls, _t, _n, width", STUDY)
def test_logits_and_embedding_shapes(cls, _t, _n, width):
    model = cls().eval()
    x = torch.rand(5, 1, 28, 28)
    assert model(x).shape == (5, 10)
    assert model.embed(x).shape == (5, width)


def test_summary_table_matches_keras_layers():
    text = keras_summary_markdown(CNN())
    assert "Total params: 306,906" in text and "Non-trainable params: 928" in text
    assert "| features.0 (Conv2d) | (None, 32, 28, 28) | 320 |" in text
    assert "(None, 128, 3, 3)" in text  # three 'valid' 2x2 poolings: 28 -> 14 -> 7 -> 3
    assert "Tanh" not in text  # activations are part of their layer in Keras's table
    rnn = keras_summary_markdown(SimpleRNN())
    assert "(SimpleRNN) | (None, 28, 256) | 72,960 |" in rnn
    lstm = keras_summary_markdown(BiLSTM())
    assert "(Bidirectional LSTM) | (None, 28, 512) | 583,680 |" in lstm
    assert "(Bidirectional LSTM) | (None, 256) | 656,384 |" in lstm


def recurrent_layers(model):
    return [m for m in model.modules() if isinstance(m, KerasRecurrent)]


@pytest.mark.parametrize("cls", [SimpleRNN, BiLSTM, StackedLSTM, StackedGRU])
def test_bias_hh_is_zero_and_stays_zero_after_training_steps(cls):
    torch.manual_seed(0)
    model = cls()
    optimizer = model.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    keras_biases = [
        p for layer in recurrent_layers(model) for n, p in layer.rnn.named_parameters() if n.startswith("bias_ih")
    ]
    initial = [p.detach().clone() for p in keras_biases]
    for _ in range(3):
        x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    biases = [
        p for layer in recurrent_layers(model) for n, p in layer.rnn.named_parameters() if n.startswith("bias_hh")
    ]
    assert biases and all(not p.requires_grad and p.abs().max() == 0 for p in biases)
    assert not any(id(p) in optimised for p in biases)
    # ...while the one Keras bias did train
    assert all(not torch.equal(p, p0) for p, p0 in zip(keras_biases, initial, strict=False))


def test_lstm_forget_gate_bias_is_one_and_other_gates_zero():
    for layer in recurrent_layers(BiLSTM()):
        u = layer.units
        for suffix in ("l0", "l0_reverse"):
            bias = getattr(layer.rnn, f"bias_ih_{suffix}")
            assert torch.equal(bias[u : 2 * u], torch.ones(u))
            assert bias[:u].abs().max() == 0 and bias[2 * u :].abs().max() == 0


def glorot_spread(weight: torch.Tensor) -> tuple[float, float]:
    """max |w| and std of `weight` as fractions of what Keras's glorot-uniform gives: U(-b, b) with
    b = sqrt(6 / (fan_in + fan_out)), so max |w| -> b and std -> b / sqrt(3)."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    bound = math.sqrt(6 / (fan_in + fan_out))
    return weight.abs().max().item() / bound, weight.std().item() / (bound / math.sqrt(3))


def is_glorot_uniform(weight: torch.Tensor) -> bool:
    top, spread = glorot_spread(weight.detach())
    return 0.9 <= top <= 1.0 and spread == pytest.approx(1, abs=0.1)


def glorot_kernels(model: nn.Module) -> dict[str, torch.Tensor]:
    """The kernels Keras initialises glorot-uniform: Dense and Conv2D kernels, recurrent input kernels."""
    return {
        name: p
        for name, p in model.named_parameters()
        if "weight_ih" in name or (name.endswith(".weight") and p.dim() >= 2)
    }


def test_torch_default_init_is_not_taken_for_glorot():
    torch.manual_seed(0)
    defaults = [nn.Linear(256, 128).weight, nn.Conv2d(32, 32, 3).weight, nn.RNN(28, 256).weight_ih_l0]
    defaults += [nn.LSTM(28, 256).weight_ih_l0, nn.LSTM(512, 128).weight_ih_l0, nn.Linear(16, 10).weight]
    assert not any(is_glorot_uniform(w) for w in defaults)


@pytest.mark.parametrize("cls, kernels", [(CNN, 8), (SimpleRNN, 4), (BiLSTM, 7), (StackedLSTM, 4), (StackedGRU, 4)])
def test_dense_conv_and_recurrent_input_kernels_are_glorot_uniform(cls, kernels):
    torch.manual_seed(0)
    found = glorot_kernels(cls())
    assert len(found) == kernels
    for name, weight in found.items():
        assert is_glorot_uniform(weight), (name, glorot_spread(weight.detach()))


def test_recurrent_kernels_are_orthogonal():
    kernels = [
        (layer.units, w_hh)
        for layer in recurrent_layers(SimpleRNN()) + recurrent_layers(BiLSTM())
        for name, w_hh in layer.rnn.named_parameters()
        if name.startswith("weight_hh")
    ]
    assert len(kernels) == 3 + 2 * 2
    # (gates x units, units): orthonormal columns, as Keras's orthogonal (units, gates x units) has orthonormal rows
    for units, w_hh in kernels:
        assert torch.allclose(w_hh.T @ w_hh, torch.eye(units), atol=1e-4)


@pytest.mark.parametrize("cls", [StackedLSTM, StackedGRU])
def test_gated_stacks_have_keras_orthogonal_recurrent_kernels_and_lstm_forget_bias(cls):
    layers = recurrent_layers(cls())
    assert [layer.units for layer in layers] == [256, 128, 64]
    for layer in layers:
        u = layer.units
        torch.testing.assert_close(layer.rnn.weight_hh_l0.T @ layer.rnn.weight_hh_l0, torch.eye(u), atol=1e-4, rtol=0)
        bias = layer.rnn.bias_ih_l0
        forget = torch.ones(u) if cls is StackedLSTM else torch.zeros(u)  # GRU: all zero, as Keras's
        assert torch.equal(bias[u : 2 * u], forget) and bias[:u].abs().max() == 0 and bias[2 * u :].abs().max() == 0


def test_batchnorm_uses_keras_momentum_and_epsilon():
    norms = [m for cls in (CNN, SimpleRNN) for m in cls().modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 8
    assert all(m.momentum == 0.01 and m.eps == 1e-3 for m in norms)


def test_bidirectional_final_state_is_forward_last_and_backward_first():
    layer = KerasRecurrent("lstm", 28, 16, bidirectional=True)
    x = torch.rand(3, 28, 28)
    sequence, _ = layer.rnn(x)
    final = layer(x)
    assert torch.allclose(final[:, :16], sequence[:, -1, :16])
    assert torch.allclose(final[:, 16:], sequence[:, 0, 16:])  # not output[:, -1] for the backward half
    assert not torch.allclose(final[:, 16:], sequence[:, -1, 16:])


def test_hyperparameters_are_plain_values():
    model = BiLSTM(optimizer={"_target_": "fmnist.models.optim.KerasAdam", "lr": 0.01})
    assert model.hparams["optimizer"] == {"_target_": "fmnist.models.optim.KerasAdam", "lr": 0.01}
    assert isinstance(model.configure_optimizers(), KerasAdam)


def test_the_epoch_loss_is_the_mean_over_images_when_the_last_batch_is_smaller(monkeypatch):
    # torchmetrics' MeanMetric(nan_strategy="disable") drops update()'s weight: a batch mean would count the
    # last 20 images as much as each batch of 50
    torch.manual_seed(0)
    model = CNN().eval()
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)
    images, labels = torch.rand(120, 1, 28, 28), torch.randint(0, 10, (120,))
    with torch.no_grad():
        for start, stop in ((0, 50), (50, 100), (100, 120)):
            model.validation_step((images[start:stop], labels[start:stop]), 0)
            model.test_step((images[start:stop], labels[start:stop]), 0)
        expected = nn.functional.cross_entropy(model(images), labels)
    torch.testing.assert_close(model.val_loss.compute(), expected)
    torch.testing.assert_close(model.test_loss.compute(), expected)
