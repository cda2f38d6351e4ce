"""A run folder trusts nothing it reads on resume: crafted training states in last.ckpt are one line, the run's
recorded overrides never name a class, a resolver or a place to write, its YAML is read without aliases, and a
finished run keeps its figures (issue 26's first root cause)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_one_error_line, run_cli


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _edit_checkpoint(run: Path, edit) -> None:
    path = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)


def _callback(checkpoint: dict, name: str) -> dict:
    (key,) = [key for key in checkpoint["callbacks"] if key.startswith(name)]
    return checkpoint["callbacks"][key]


CRAFTED_STATES = {
    "epoch timer": lambda c: _callback(c, "EpochTimer").update(epoch_seconds="soon", elapsed=[1]),
    "random state": lambda c: _callback(c, "RandomState").update(cpu=torch.zeros(3, dtype=torch.uint8)),
    "optimizer": lambda c: c["optimizer_states"][0]["param_groups"][0].update(lr="fast"),
    "optimizer groups": lambda c: c.update(optimizer_states=[{"state": {}, "param_groups": []}]),
}


@pytest.mark.parametrize("edit", CRAFTED_STATES.values(), ids=CRAFTED_STATES)
def test_a_crafted_training_state_is_one_line_and_changes_nothing(finished_tiny_run, tmp_path, edit):
    run = _copy(finished_tiny_run, tmp_path)
    _edit_checkpoint(run, edit)
    before = (run / "metrics.json").read_bytes()
    result = run_cli("fmnist.train", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert_one_error_line(result, "last.ckpt", "epoch_NNN.ckpt")
    assert (run / "metrics.json").read_bytes() == before


def test_max_time_on_a_finished_run_keeps_its_train_seconds(finished_tiny_run, tmp_path):
    run = _copy(finished_tiny_run, tmp_path)
    before = json.loads((run / "metrics.json").read_text())
    result = run_cli("fmnist.train", f"resume={run}", "trainer.max_time=00:00:10:00", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text()) == before


RECORDED = {
    "target": ("+callbacks.evil._target_=subprocess.Popen", "callbacks.evil._target_"),
    "resolver": ("seed=${oc.env:HOME}", "oc.env"),
    "escaped resolver": ("+x=${oc.${e}:SECRET}", "${oc."),
    "checkpoint folder": ("callbacks.model_checkpoint.dirpath=/tmp/elsewhere", "dirpath"),
    "checkpoint name": ("callbacks.model_checkpoint.filename={epoch].__globals__}", "filename"),
    "logger folder": ("logger.tensorboard.save_dir=../other", "save_dir"),
    "mlflow artifacts": ("+logger.mlflow.artifact_location=/tmp/elsewhere", "artifact_location"),
    "mlflow store in a dict": ('logger.mlflow={tracking_uri:"file:///tmp/elsewhere"}', "tracking_uri"),
    "folder in a dict": ("callbacks.model_checkpoint={dirpath:/tmp/elsewhere}", "dirpath"),
    "class in a dict": ("+callbacks.evil=[{_target_:subprocess.Popen}]", "_target_"),
    "sweep": ("seed=1,2", "seed=1,2"),
    "directive": ("+model._recursive_=false", "_recursive_"),
}


@pytest.mark.parametrize("override, named", RECORDED.values(), ids=RECORDED)
def test_a_recorded_override_never_names_a_class_a_resolver_or_a_place(finished_tiny_run, tmp_path, override, named):
    run = _copy(finished_tiny_run, tmp_path)
    overrides = run / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + f"- '{override}'\n")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    result = run_cli("fmnist.train", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert_one_error_line(result, "overrides.yaml", "refused", named)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert not (tmp_path / "elsewhere").exists()


def test_a_recorded_mlflow_store_is_used_only_when_the_command_line_names_it(finished_tiny_run, tmp_path):
    run = _copy(finished_tiny_run, tmp_path)
    overrides = run / ".hydra" / "overrides.yaml"
    store = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    overrides.write_text(
        overrides.read_text().replace("logger={}", "logger=mlflow") + f"- logger.mlflow.tracking_uri={store}\n"
    )
    result = run_cli("fmnist.train", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert_one_error_line(result, "tracking_uri", store)
    assert not (tmp_path / "elsewhere").exists()


def test_an_alias_bomb_and_a_malformed_overrides_file_are_one_line(finished_tiny_run, tmp_path):
    run = _copy(finished_tiny_run, tmp_path)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(20)
    )
    config = run / ".hydra" / "config.yaml"
    saved = config.read_text()
    config.write_text(saved + bomb)
    assert_one_error_line(run_cli("fmnist.train", f"resume={run}", cwd=tmp_path), "config.yaml", "aliases")
    config.write_text(saved)
    (run / ".hydra" / "overrides.yaml").write_text("{model: [unclosed\n")
    result = run_cli("fmnist.train", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert_one_error_line(result, "overrides.yaml")
    assert config.read_text() == saved  # nothing was rewritten before the refusal


def test_an_edited_run_config_is_refused_not_used(finished_tiny_run, tmp_path):
    run = _copy(finished_tiny_run, tmp_path)
    config = run / ".hydra" / "config.yaml"
    text = config.read_text()
    assert "dirpath: ${output_dir}/checkpoints" in text
    config.write_text(
        text.replace("dirpath: ${output_dir}/checkpoints", "dirpath: ${output_dir}/${x}") + "x: ../other\n"
    )
    result = run_cli("fmnist.train", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert_one_error_line(result, "config.yaml", "callbacks.model_checkpoint.dirpath", "differs")
    assert not (tmp_path / "other").exists()


def test_a_resume_re_composes_and_goes_on(finished_tiny_run, tmp_path):
    run = _copy(finished_tiny_run, tmp_path)
    (run / ".hydra" / "hydra.yaml").write_text("hydra: {runtime: {choices: {model: ${oc.env:HOME}}}}\n")  # unread
    result = run_cli("fmnist.train", f"resume={run}", "trainer.max_epochs=2", "test=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["model"] == "rnn"
    assert "trainer.max_epochs=2" in (run / ".hydra" / "overrides.yaml").read_text()


def test_a_recorded_data_root_is_read_never_unpacked_into(finished_tiny_run, tmp_path, tiny_root):
    run = _copy(finished_tiny_run, tmp_path)
    overrides = run / ".hydra" / "overrides.yaml"
    elsewhere = tmp_path / "elsewhere"
    overrides.write_text(overrides.read_text().replace(f"data.root={tiny_root}", f"data.root={elsewhere}"))
    result = run_cli("fmnist.train", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert_one_error_line(result, "data.root", str(elsewhere))
    assert not elsewhere.exists()
    result = run_cli("fmnist.train", f"resume={run}", "trainer.max_epochs=2", f"data.root={tiny_root}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
