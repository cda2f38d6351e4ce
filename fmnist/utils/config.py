"""Composing fmnist's Hydra configs from Python (tests, benchmarks, notebooks) as the CLI would."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")  # absolute: the commands run as scripts or modules alike


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    """The composed config, with Hydra's runtime config set so `${hydra:...}` keys resolve.

    Give `output_dir=...` in `overrides`: outside a Hydra run there is no run folder.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def compose_run(overrides: list[str], config_name: str = "train") -> tuple[DictConfig, DictConfig]:
    """conf/ composed with `overrides`, unresolved: (the task's config, its `hydra` node). Hydra's global state
    (GlobalHydra, HydraConfig) is left as it was, so this works inside a running command too."""
    hydra = GlobalHydra.instance()
    current = HydraConfig.instance().cfg
    try:
        if hydra.is_initialized():
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        else:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    finally:
        HydraConfig.instance().cfg = current
    with open_dict(cfg):
        node = cfg.pop("hydra")
    return cfg, node
