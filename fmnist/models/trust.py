"""What a checkpoint may name: the only model and optimizer classes fmnist builds from a file.

A checkpoint names its model class (`fmnist_model`) and optimizer (`hyper_parameters.optimizer._target_`).
Each name is looked up by string equality in the tables below, never imported as a path, and the values
handed to a class from a checkpoint are checked against its constructor first: nothing read from a
file decides what code runs. Nor how much memory: every integer is bounded by MAX_SIZE, and the network is
sized on the meta device, against MAX_PARAMETERS, before it is built. (A run folder: fmnist/runs/resume.py
re-composes it from the package's own fmnist/conf/ and builds nothing its files name.)
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fmnist.models.optim import KerasAdam, KerasRMSprop
from fmnist.utils.errors import FmnistError

# The optimizers of fmnist/conf/optimizer/, by the name configs give (torch.optim.Adam) and the one
# checkpoints store (torch.optim.adam.Adam, from the partial's module).
_OPTIMIZER_CLASSES = {
    "torch.optim": (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop),
    "fmnist.models.optim": (KerasRMSprop, KerasAdam),
}
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    name: cls
    for module, classes in _OPTIMIZER_CLASSES.items()
    for cls in classes
    # fmnist.optim: where the Keras optimizers lived before fmnist/models/, as earlier checkpoints name them
    for name in (f"{module}.{cls.__name__}", f"{cls.__module__}.{cls.__qualname__}", f"fmnist.optim.{cls.__name__}")
    if module == "fmnist.models.optim" or not name.startswith("fmnist.")
}
OPTIMIZER_NAMES = tuple(f"{module}.{cls.__name__}" for module, classes in _OPTIMIZER_CLASSES.items() for cls in classes)

# The most parameters (and buffer values) a network built from a file may hold: fmnist's largest has about 2.8 million.
MAX_PARAMETERS = 50_000_000
# The largest integer a file may hand a model. Each is a size or a count (units, channels, layers, heads, a
# ratio), 256 at most in fmnist's networks. Sizing on the meta device allocates nothing, but it still builds
# every layer, so a count must be small before that: 1024 layers take a second or two there.
MAX_SIZE = 1024


def _shown(value: Any) -> str:
    """A value from a file as one short line."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _key(name: Any) -> str:
    """A key from a file, as written after a dot in a message."""
    return name if isinstance(name, str) and name.isidentifier() else _shown(name)


def _models() -> tuple[dict[str, type], dict[str, type]]:
    import fmnist.models  # imports this module (through fmnist.models.base): looked up at call time

    return fmnist.models.MODELS, fmnist.models.MODEL_NAMES


def model_class(name: Any, source: str | Path, key: str = "fmnist_model") -> type:
    """The fmnist model class that `name` (read from `key` of `source`) stands for, or one FmnistError."""
    models, names = _models()
    if isinstance(name, str) and name in names:
        return names[name]
    raise FmnistError(
        f"{source} is refused: its {key} {_shown(name)} is not an fmnist model "
        f"({', '.join(models)}), and fmnist builds no other class from a file. "
        "Fix: use a checkpoint written by fmnist.train"
    )


def _number(value: Any) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))  # bool is no number here


def _integer(value: Any) -> bool:
    return type(value) is int and value > 0


def _counts(parameter: inspect.Parameter) -> bool:
    """Whether a constructor parameter is a size or count: annotated an integer or a list of them."""
    annotation = parameter.annotation
    return annotation is int or (typing.get_origin(annotation) is Sequence and typing.get_args(annotation) == (int,))


def _oversized(value: Any) -> bool:
    """Whether `value` is, or lists, an integer beyond MAX_SIZE either way."""
    items = value if isinstance(value, (list, tuple)) else (value,)
    return any(type(item) is int and abs(item) > MAX_SIZE for item in items)


def _sizes(value: Any) -> bool:
    """Whether `value` is an integer or a list of them: a size or count, what makes a network large."""
    items = value if isinstance(value, (list, tuple)) else (value,)
    return bool(items) and all(type(item) is int for item in items)


def _plain(value: Any) -> bool:
    """A value an optimizer setting may take: null, a bool, a finite number or a list of numbers."""
    if isinstance(value, (list, tuple)):
        return all(_number(item) for item in value)
    return value is None or type(value) is bool or _number(value)


def optimizer_class(spec: Any, where: str) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimizer class and keyword arguments of an optimizer spec `{"_target_": ..., **kwargs}`, checked:
    the target in OPTIMIZERS, the names in its signature, the values plain. `where` names the spec."""
    if not isinstance(spec, dict) or not isinstance(spec.get("_target_"), str):
        raise FmnistError(f"{where} must be a mapping with a _target_ naming an optimizer, not {_shown(spec)}")
    target, kwargs = spec["_target_"], {k: v for k, v in spec.items() if k != "_target_"}
    if target not in OPTIMIZERS:
        raise FmnistError(
            f"{where}._target_ {_shown(target)} is not an optimizer fmnist builds: "
            f"use one of {', '.join(OPTIMIZER_NAMES)} (fmnist/conf/optimizer/)"
        )
    cls = OPTIMIZERS[target]
    accepted = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "params")]
    for name, value in kwargs.items():
        if name not in accepted:
            raise FmnistError(f"{where}.{_key(name)} is not a setting of {target} (expected: {', '.join(accepted)})")
        if not _plain(value):
            raise FmnistError(
                f"{where}.{name} must be a number, true/false, null or a list of numbers, not {_shown(value)}"
            )
    return cls, kwargs


def constructor_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor parameters of `cls`, with those its base classes take through **kwargs."""
    settings: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__, eval_str=True).parameters.values()
        for parameter in parameters:
            if parameter.name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                settings.setdefault(parameter.name, parameter)
        if not any(parameter.kind == parameter.VAR_KEYWORD for parameter in parameters):
            break
    return settings


def _expected(parameter: inspect.Parameter) -> tuple[Callable[[Any], bool], str]:
    """A test for a hyperparameter's value from its annotation, and its description."""
    annotation = parameter.annotation
    if annotation is bool:
        return (lambda v: type(v) is bool), "true or false"
    if annotation is float:
        return _number, "a number"
    if annotation is int:
        return (lambda v: type(v) is int), "an integer"
    if typing.get_origin(annotation) is Sequence and typing.get_args(annotation) in ((float,), (int,)):
        length = len(parameter.default)
        item, kind = (_number, "numbers") if typing.get_args(annotation) == (float,) else (_integer, "integers")
        return (
            (lambda v: isinstance(v, (list, tuple)) and len(v) == length and all(item(i) for i in v)),
            f"a list of {length} {kind}",
        )
    raise TypeError(f"fmnist.trust cannot check a hyperparameter annotated {annotation!r}: add it to _expected")


def checked_hparams(cls: type, hparams: Any, source: str | Path) -> dict[str, Any]:
    """`hparams` read from `source`, if every name is a constructor parameter of `cls` and every value
    is plain and of its declared type (the optimizer a spec in OPTIMIZERS); else one FmnistError."""
    prefix = f"{source} does not match {cls.__name__}"
    if not isinstance(hparams, dict):
        raise FmnistError(f"{prefix}: hyper_parameters must be a mapping, not {_shown(hparams)}")
    settings = constructor_parameters(cls)
    for name, value in hparams.items():
        if name not in settings:
            raise FmnistError(
                f"{prefix}: hyper_parameters.{_key(name)} is not a {cls.__name__} "
                f"setting (expected: {', '.join(settings)})"
            )
        if name == "optimizer":
            optimizer_class(value, f"{source} is refused: hyper_parameters.optimizer")
            continue
        test, description = _expected(settings[name])
        if not test(value):
            raise FmnistError(f"{prefix}: hyper_parameters.{name} must be {description}, not {_shown(value)}")
        if _counts(settings[name]) and _oversized(value):
            raise FmnistError(
                f"{source} is refused: its {cls.__name__}'s hyper_parameters.{name}={_shown(value)} is beyond "
                f"{MAX_SIZE}, the largest size or count fmnist builds a network with from a file"
            )
    return hparams


def checked_size(cls: type[torch.nn.Module], hparams: dict[str, Any], source: str | Path) -> int:
    """The parameters and buffer values of `cls(**hparams)` (hparams from checked_hparams), counted on the meta
    device, where nothing is allocated; one FmnistError above MAX_PARAMETERS. A bad value raises the
    constructor's TypeError or ValueError."""
    with torch.device("meta"):
        network = cls(**hparams)
    count = sum(tensor.numel() for tensor in (*network.parameters(), *network.buffers()))
    if count > MAX_PARAMETERS:
        sizes = " ".join(f"{name}={_shown(value)}" for name, value in hparams.items() if _sizes(value))
        raise FmnistError(
            f"{source} is refused: its {cls.__name__} (hyper_parameters {sizes or 'as given'}) would hold "
            f"{count:,} parameters, beyond the {MAX_PARAMETERS:,} fmnist builds a network with from a file"
        )
    return count
