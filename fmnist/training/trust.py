"""What a run folder's `.hydra/config.yaml` may name: the only classes `resume=` builds from a run's config.

Each `_target_` is looked up by string equality in CONFIG_TARGETS (and the model and optimizer tables
of fmnist/models/trust.py), never imported as a path first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from fmnist.models.trust import OPTIMIZERS, _key, _models, _shown
from fmnist.utils.errors import FmnistError

# Every other `_target_` a run's config may hold: fmnist's own classes and the Lightning ones that
# conf/ uses (tests/test_trust.py checks that this covers conf/). Models and optimizers are added from
# their tables in `config_targets`.
CONFIG_TARGETS = frozenset(
    {
        "fmnist.data.FashionMNISTDataModule",
        "fmnist.training.callbacks.KerasModelSummary",
        "fmnist.training.run_folder.RunCheckpoint",
        "fmnist.training.callbacks.StopOnNonFiniteLoss",
        "fmnist.training.callbacks.SaveOnInterrupt",
        "fmnist.training.callbacks.RandomState",
        "fmnist.training.callbacks.TestedEMA",
        "lightning.pytorch.Trainer",
        "lightning.pytorch.callbacks.ModelCheckpoint",  # in the configs of runs from before RunCheckpoint
        "lightning.pytorch.callbacks.EarlyStopping",
        "lightning.pytorch.loggers.TensorBoardLogger",
    }
)

# Where classes lived before fmnist/ was laid out in sub-packages: the configs of earlier runs name them so,
# and `current_targets` renames them before anything is built.
MOVED_TARGETS = {
    "fmnist.callbacks.KerasModelSummary": "fmnist.training.callbacks.KerasModelSummary",
    "fmnist.callbacks.RunCheckpoint": "fmnist.training.run_folder.RunCheckpoint",
    "fmnist.callbacks.StopOnNonFiniteLoss": "fmnist.training.callbacks.StopOnNonFiniteLoss",
    "fmnist.resume.SaveOnInterrupt": "fmnist.training.callbacks.SaveOnInterrupt",
    "fmnist.resume.RandomState": "fmnist.training.callbacks.RandomState",
    "fmnist.optim.KerasRMSprop": "fmnist.models.optim.KerasRMSprop",
    "fmnist.optim.KerasAdam": "fmnist.models.optim.KerasAdam",
}


def config_targets() -> frozenset[str]:
    """Every `_target_` that `resume=` may instantiate from a run's config."""
    models, names = _models()
    return CONFIG_TARGETS | MOVED_TARGETS.keys() | (names.keys() - models.keys()) | OPTIMIZERS.keys()


def check_targets(cfg: DictConfig, source: str | Path) -> None:
    """Refuse, with one FmnistError naming the key, a config from `source` with any `_target_` (at any
    depth: Hydra instantiates nested ones too) outside `config_targets()`."""
    allowed = config_targets()

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{_key(key)}" if path else _key(key)
                if key == "_target_" and (not isinstance(value, str) or value not in allowed):
                    raise FmnistError(
                        f"{source} is refused: {where} {_shown(value)} is not a class fmnist builds "
                        "from a run's config (fmnist's own and the Lightning classes of its conf/ "
                        "only). Fix: start a new run, or delete that entry from the file"
                    )
                walk(value, where)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{path}[{index}]")

    walk(OmegaConf.to_container(cfg, resolve=True), "")


def current_targets(cfg: DictConfig) -> None:
    """Rename, in place, the `_target_`s of a checked config that name a class where it lived before (MOVED_TARGETS)."""

    def walk(node: Any) -> None:
        if isinstance(node, DictConfig):
            for key in node:
                value = node.get(key)
                if key == "_target_" and isinstance(value, str) and value in MOVED_TARGETS:
                    node[key] = MOVED_TARGETS[value]
                elif key != "_target_":
                    walk(value)
        elif isinstance(node, ListConfig):
            for item in node:
                walk(item)

    walk(cfg)
