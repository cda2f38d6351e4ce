"""A search space from its config (conf/search_space/<model>.yaml) as Optuna distributions.

The config keeps Hydra's sweep syntax, read by Hydra's own override parser: `choice(a, b, ...)` (categorical),
`interval(low, high)` (float, or int when both ends are integers), `range(start, stop, step)` (int or float
steps), `tag(log, interval(...))` for a log scale. Every key must name a key of the trials' config.
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

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
