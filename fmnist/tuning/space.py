"""A search space from its config (fmnist/conf/search_space/<model>.yaml) as Optuna distributions.

The config keeps Hydra's sweep syntax, read by Hydra's own override parser: `choice(a, b, ...)` (categorical),
`interval(low, high)` (float, or int when both ends are integers), `range(start, stop, step)` (int or float
steps), `tag(log, interval(...))` for a log scale. Every key must name a key of the trials' config. `mismatch` tells
whether a trial found in the study's storage is one of this space's.
"""

from __future__ import annotations

import math
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.trial import FrozenTrial, TrialState

from fmnist.utils.errors import FmnistError


def _distribution(key: str, text: str, where: str) -> BaseDistribution:
    try:
        override = OverridesParser.create().parse_overrides([f"{key}={text}"])[0]
    except Exception as error:  # noqa: BLE001 - Hydra's grammar error, in one line
        raise FmnistError(f"{where}: {key}: {text!r} is not a sweep: {str(error).splitlines()[0][:200]}") from None
    value = override.value()
    if isinstance(value, ChoiceSweep):
        choices = list(value.list)
        if not choices or not all(isinstance(c, (bool, int, float, str)) for c in choices):
            raise FmnistError(f"{where}: {key}: choice() takes numbers, strings or booleans")
        return CategoricalDistribution(choices)
    log = "log" in (getattr(value, "tags", None) or set())
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(start, stop - 1, step=step, log=log)
        return FloatDistribution(float(start), float(stop), step=float(step), log=log)
    raise FmnistError(
        f"{where}: {key}: {text!r} is not a search dimension: use choice(...), interval(low, high), "
        "range(start, stop, step) or tag(log, interval(low, high))"
    )


def search_space(space: DictConfig | dict, trial_cfg: DictConfig, where: str) -> dict[str, BaseDistribution]:
    """`{key: distribution}` for a search-space config; one FmnistError for an unknown key or a bad dimension."""
    items = OmegaConf.to_container(space, resolve=False) if OmegaConf.is_config(space) else dict(space)
    if not items:
        raise FmnistError(f"{where} is empty: give at least one key to search")
    distributions = {}
    for key, text in items.items():
        if isinstance(text, (dict, list)) or not isinstance(text, str):
            raise FmnistError(
                f"{where}: {key}: {text!r} is a {type(text).__name__}, not a search dimension such as "
                "choice(32, 64) or tag(log, interval(1e-4, 1e-1))"
            )
        if OmegaConf.select(trial_cfg, str(key), default=KeyError) is KeyError:
            raise FmnistError(f"{where}: {key} is not a key of the trials' config: a typo, or another model's key?")
        try:
            distributions[str(key)] = _distribution(str(key), text, where)
        except ValueError as error:  # e.g. low > high, a log scale from 0
            raise FmnistError(f"{where}: {key}: {error}") from None
    return distributions


def contained(distribution: BaseDistribution, value: Any) -> bool:
    """Whether `value` is one the distribution can give, of its type (a stored or enqueued trial's value is checked)."""
    if isinstance(distribution, CategoricalDistribution):
        return any(type(value) is type(c) and value == c for c in distribution.choices)
    if isinstance(distribution, IntDistribution) and (type(value) is not int):
        return False
    if isinstance(distribution, FloatDistribution) and (type(value) is not float):
        return False
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (TypeError, ValueError):
        return False


def brief(value: Any, limit: int = 60) -> str:
    """A value read from a storage, for one line of text: printable, short."""
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def mismatch(trial: FrozenTrial, space: dict[str, BaseDistribution]) -> tuple[str, bool] | None:
    """Why a trial in the study's storage is not one of this space's, and whether Optuna's storage refuses the space
    beside it (a key stored with another kind, log scale or choices); None for one of the space's trials."""
    for key, stored in trial.distributions.items():
        if key in space:
            try:
                check_distribution_compatibility(stored, space[key])
            except ValueError:
                why = f"{brief(key)} is {brief(stored, 120)}, where the search space has {brief(space[key], 120)}"
                return why, True
    params = trial.params
    if trial.state == TrialState.WAITING:  # an enqueued trial: the parameters it would be given
        params = trial.system_attrs.get("fixed_params", {})
        if not isinstance(params, dict):
            return "its enqueued parameters are not a mapping", False
    unknown = sorted(map(str, set(params) - set(space)))
    if unknown:
        return f"{', '.join(brief(k) for k in unknown[:3])}: not a key of the search space", False
    for key, value in params.items():
        if not contained(space[key], value):
            return f"{brief(key)}={brief(value)} is outside the search space", False
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and set(params) != set(space):
        return f"it has no {', '.join(sorted(set(space) - set(params)))}", False
    if trial.state == TrialState.COMPLETE and not (isinstance(trial.value, float) and math.isfinite(trial.value)):
        return f"its value {brief(trial.value)} is not a finite number", False
    try:
        constrained = bool(trial.constraints)
    except Exception:  # noqa: BLE001 - a malformed constraints attribute
        constrained = True
    if constrained:
        return "it has constraints, which fmnist.tune never sets", False
    return None
