"""The package's layout holds: the import contracts cover every layer, the commands that pyproject declares,
docstrings name real files, the config groups' packages, and old run folders that name classes where they
used to be. Import direction and docstring style are `make lint`'s (import-linter, ruff's D rules)."""

from __future__ import annotations

import ast
import importlib
import re
import shutil
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.conftest import CONF, ROOT, compose_train, run_cli, trained_run_overrides

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PACKAGE = ROOT / "fmnist"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
ALL_MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_import_contracts_cover_every_sub_package_and_every_command():
    """`make lint` runs import-linter on pyproject's layers: a sub-package or a command left out of them
    would go unchecked."""
    (layers,) = [c for c in PYPROJECT["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    layered = {name.strip() for layer in layers["layers"] for name in layer.split("|")}
    sub_packages = {f"fmnist.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    commands = {f"fmnist.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert layered == sub_packages | commands


# ---------------------------------------------------------------- the commands


def test_python_m_fmnist_lists_every_declared_command():
    result = run_cli("fmnist", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines()[1:] if line.strip()}
    declared = {name.removeprefix("fmnist-") for name in SCRIPTS if name != "fmnist"}
    assert "fmnist" in SCRIPTS and declared
    assert listed == declared


def test_the_commands_table_and_the_console_scripts_agree():
    from fmnist.__main__ import COMMANDS

    assert set(COMMANDS) == {name.removeprefix("fmnist-") for name in SCRIPTS if name != "fmnist"}
    for name in COMMANDS:
        assert (PACKAGE / f"{name}.py").is_file(), name
        assert SCRIPTS[f"fmnist-{name}"].split(":")[0] == f"fmnist.{name}"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_target_imports_and_is_callable(script):
    module, function = SCRIPTS[script].split(":")
    assert callable(getattr(importlib.import_module(module), function))


# ---------------------------------------------------------------- docstrings

REPO_DIRS = ("fmnist/", "docs/", "tests/", "benchmarks/")


def docstrings(path: Path):
    tree = ast.parse(path.read_text())
    for node in [tree, *ast.walk(tree)]:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node)
            if text:
                yield getattr(node, "name", "module"), text


def test_docstrings_name_no_path_outside_the_repository_and_no_missing_file():
    for path in ALL_MODULES:
        for where, text in docstrings(path):
            assert "../" not in text and "/work/" not in text, f"{path.relative_to(ROOT)} {where}: {text!r}"
            for named in re.findall(rf"(?<![\w/.])((?:{'|'.join(REPO_DIRS)})[\w./-]*\w)", text):
                assert (ROOT / named).exists(), f"{path.relative_to(ROOT)} {where} names {named}, which is missing"


# ---------------------------------------------------------------- config groups

COMPONENT_GROUPS = ("data", "trainer", "logger", "callbacks", "optimizer", "paths", "hydra", "search_space")


def header_package(file: Path) -> str | None:
    """The `# @package` directive of a config file's leading comment block, as Hydra reads it."""
    for line in file.read_text().splitlines():
        if not line.startswith("#"):
            return None
        match = re.match(r"#\s*@package\s+(\S+)", line)
        if match:
            return match.group(1)
    return None


def test_component_groups_write_only_their_own_package():
    files = [f for group in COMPONENT_GROUPS for f in (CONF / group).rglob("*.yaml")]
    assert len(files) > 10
    assert not [str(f.relative_to(CONF)) for f in files if header_package(f) == "_global_"]
    assert header_package(CONF / "model" / "cnn.yaml") == "_global_"  # the check reads the directive


def _compose(*overrides: str):
    try:
        return compose_train([*overrides, "output_dir=."])
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    "overrides, resident, per_step, fast_step",
    [([], False, 1, False), (["trainer=gpu_fast"], True, 100, True), (["trainer=cpu_fast"], True, 100, True)],
)
def test_the_fast_trainer_configs_reach_the_data_and_the_model(overrides, resident, per_step, fast_step):
    cfg = _compose(*overrides)
    assert cfg.data.device_resident is resident
    assert cfg.data.batches_per_step == per_step
    assert cfg.model.fast_step is fast_step
    assert set(cfg.trainer.get("fast", {})) <= {"device_resident", "batches_per_step", "eval_batch_size", "step"}


def test_data_overrides_win_over_the_fast_trainer_config():
    cfg = _compose("trainer=gpu_fast", "data.batches_per_step=5", "data.eval_batch_size=30")
    assert cfg.data.batches_per_step == 5 and cfg.data.eval_batch_size == 30 and cfg.data.device_resident is True


@pytest.mark.parametrize("model", ["cnn", "rnn", "bilstm", "bilstm_stated"])
def test_a_run_config_has_no_search_space_and_each_model_has_one(model):
    assert "search_space" not in _compose(f"model={model}")  # fmnist.tune reads fmnist/conf/search_space/<model>.yaml
    assert (CONF / "search_space" / f"{model}.yaml").is_file()


def test_debug_tiny_is_a_quick_cpu_run_that_the_command_line_still_overrides():
    cfg = _compose("model=bilstm", "debug=tiny")  # after the model's recipe (batch 64, 20 epochs)
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_epochs == 1 and cfg.data.batch_size == 50
    assert cfg.trainer.limit_train_batches == 8 and cfg.trainer.enable_progress_bar is False
    assert _compose("debug=tiny", "trainer.max_epochs=2").trainer.max_epochs == 2


# ---------------------------------------------------------------- old run folders

OLD_TARGETS = {
    "fmnist.runs.folder.RunCheckpoint": "fmnist.callbacks.RunCheckpoint",
    "fmnist.training.callbacks.KerasModelSummary": "fmnist.callbacks.KerasModelSummary",
    "fmnist.training.callbacks.StopOnNonFiniteLoss": "fmnist.callbacks.StopOnNonFiniteLoss",
    "fmnist.training.callbacks.SaveOnInterrupt": "fmnist.resume.SaveOnInterrupt",
    "fmnist.training.callbacks.RandomState": "fmnist.resume.RandomState",
    "fmnist.models.optim.KerasRMSprop": "fmnist.optim.KerasRMSprop",
}


@pytest.mark.slow
def test_a_run_folder_naming_classes_by_their_old_paths_resumes(trained_run, tiny_root, tmp_path):
    from fmnist.training.fit import train

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    # trained_run ran without Hydra's main: write its .hydra/ as Hydra does (config unresolved, the choices
    # in hydra.yaml), then name each class where it lived before fmnist's sub-packages.
    overrides = trained_run_overrides(tiny_root)
    text = OmegaConf.to_yaml(_compose(*overrides))
    for new, old in OLD_TARGETS.items():
        assert f"_target_: {new}\n" in text, new
        text = text.replace(f"_target_: {new}\n", f"_target_: {old}\n")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(text)
    OmegaConf.save({"hydra": {"runtime": {"choices": {"model": "cnn"}}}}, run / ".hydra" / "hydra.yaml")
    OmegaConf.save(overrides, run / ".hydra" / "overrides.yaml")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # the checkpoint names it too
    assert checkpoint["hyper_parameters"]["optimizer"]["_target_"] == "fmnist.models.optim.KerasRMSprop"
    checkpoint["hyper_parameters"]["optimizer"]["_target_"] = "fmnist.optim.KerasRMSprop"
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")

    try:
        metrics = train(compose_train([f"resume={run}", "trainer.max_epochs=3"]))
    finally:
        GlobalHydra.instance().clear()
    assert metrics["epochs"] == 3 and len(metrics["epoch_seconds"]) == 3
    assert metrics["steps"] == 3 * 8  # 360 training images in batches of 50
    written = (run / "metrics.json").read_text()
    assert '"epochs": 3' in written
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2  # 0-based: a third epoch
