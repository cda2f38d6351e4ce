"""Composing fmnist's Hydra configs from Python (tests, benchmarks, notebooks) as the CLI would."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Quote, QuotedString
from omegaconf import DictConfig, OmegaConf, open_dict

from fmnist.utils.errors import FmnistError

# the configs ship inside the package (package data of the wheel); absolute: the commands run as scripts or modules
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def composed_groups() -> str:
    """The config groups the running command composes, one line each: `group: its options (default: choice)`.

    `--help` shows these (fmnist/conf/hydra/help/fmnist.yaml), not Hydra's list of every group in fmnist/conf/.
    """
    loader = GlobalHydra.instance().config_loader()
    lines = []
    for group, choice in sorted(HydraConfig.get().runtime.choices.items()):
        if group.split("/")[0] != "hydra":
            options = sorted(loader.get_group_options(group))
            default = f"  (default: {choice or 'none'})" if len(options) > 1 else ""
            lines.append(f"{group}: {', '.join(options)}{default}")
    return "\n".join(lines) or "none: the keys below are all it takes"


# Registered on import: every Hydra command imports CONF_DIR from here before Hydra composes its --help.
OmegaConf.register_new_resolver("fmnist_groups", composed_groups, replace=True)


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
    """fmnist/conf/ composed with `overrides`, unresolved: (the task's config, its `hydra` node). Hydra's global state
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


def override_key(override: str) -> str:
    """The key of a command-line override: `+a.b=1`, `~a.b` and `a.b=1` are all `a.b`."""
    return override.split("=", 1)[0].lstrip("+~")


def hydra_value(text: str, key: str = "ckpt_path") -> str:
    """`text` as the value of an override `key=...`, quoted for Hydra's grammar when it needs it (spaces,
    quotes, `=`, commas, `${`, ...); shell quoting comes on top."""
    plain = "${" not in text
    if plain:
        try:
            plain = OverridesParser.create().parse_overrides([f"{key}={text}"])[0].value() == text
        except Exception:  # noqa: BLE001 - Hydra's grammar refuses it unquoted
            plain = False
    if plain:
        return text
    text = text.replace("${", "\\${")  # OmegaConf would read ${...} as an interpolation
    return QuotedString(text=text, quote=Quote.single if '"' in text else Quote.double).with_quotes()


def check_choices(args: list[str], config_dir: str = CONF_DIR) -> None:
    """Refuse, with one FmnistError naming the override and the choices, a `group=NAME` whose group is a folder
    of fmnist/conf/ without NAME.yaml (Hydra's own report of it is many lines). Other arguments are Hydra's to judge."""
    root = Path(config_dir)
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            (override,) = OverridesParser.create().parse_overrides([arg])
        except Exception:  # noqa: BLE001 - a grammar error is Hydra's to report
            continue
        group = override.key_or_group
        folder = root / group.replace(".", "/")
        if group.split(".")[0].split("/")[0] == "hydra" or override.is_delete() or not folder.is_dir():
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        values = [name for value in values for name in (value if isinstance(value, list) else [value])]  # [a,b]
        for value in values:
            if isinstance(value, str) and not (folder / f"{value}.yaml").is_file():  # logger={} sets a value
                choices = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
                raise FmnistError(f"{arg}: fmnist/conf/{group}/ has no {value}.yaml. Fix: choose one of {choices}")
