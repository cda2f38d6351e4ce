"""Keras-style model summary: layer, output shape and parameters, counted the way Keras counts them.

Keras counts BatchNorm's moving mean and variance as non-trainable parameters; torch keeps them
as buffers. The recurrent layers' frozen `bias_hh` (zero, a torch artefact) is not counted at all,
so the figures read directly against the study's summaries.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.Softmax)  # folded into the previous layer in Keras


def _bn_statistics(module: nn.Module) -> int:
    return sum(
        b.numel() for name, b in module.named_buffers() if name.rsplit(".", 1)[-1] in ("running_mean", "running_var")
    )


def keras_param_counts(model: nn.Module) -> dict[str, int]:
    """{"trainable", "non_trainable", "total"} in Keras's convention."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    non_trainable = _bn_statistics(model)
    return {"trainable": trainable, "non_trainable": non_trainable, "total": trainable + non_trainable}


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = []
    for part in ("features", "classifier"):
        module = getattr(model, part)
        children = list(module.named_children()) if isinstance(module, nn.Sequential) else [("", module)]
        layers += [
            (f"{part}.{name}".rstrip("."), child) for name, child in children if not isinstance(child, ACTIVATIONS)
        ]
    return layers


def keras_summary_rows(model: nn.Module, input_shape=(1, 1, 28, 28)) -> list[dict]:
    """One dict per Keras-visible layer: name, type, output shape (batch as None), params."""
    layers = _layers(model)
    shapes: dict[int, tuple] = {}
    hooks = [
        layer.register_forward_hook(lambda mod, args, out, key=id(layer): shapes.__setitem__(key, tuple(out.shape)))  # noqa: B008
        for _, layer in layers
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    rows = []
    for name, layer in layers:
        kind = type(layer).__name__
        if hasattr(layer, "cell"):  # KerasRecurrent
            kind = ("Bidirectional " if layer.bidirectional else "") + {
                "rnn": "SimpleRNN",
                "lstm": "LSTM",
                "gru": "GRU",
            }[layer.cell]
        counts = keras_param_counts(layer)
        rows.append(
            {"name": name, "type": kind, "output_shape": (None, *shapes[id(layer)][1:]), "params": counts["total"]}
        )
    return rows


def keras_summary_markdown(model: nn.Module, title: str | None = None) -> str:
    """The summary as a Markdown table plus Keras's three totals."""
    rows = keras_summary_rows(model)
    counts = keras_param_counts(model)
    lines = [f"# {title or type(model).__name__}", "", "| Layer (type) | Output shape | Param # |", "|---|---|---:|"]
    lines += [f"| {r['name']} ({r['type']}) | {r['output_shape']} | {r['params']:,} |" for r in rows]
    lines += [
        "",
        f"Total params: {counts['total']:,}",
        f"Trainable params: {counts['trainable']:,}",
        f"Non-trainable params: {counts['non_trainable']:,} (BatchNorm moving mean and variance)",
        "",
    ]
    return "\n".join(lines)
