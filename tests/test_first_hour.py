"""A new user's first hour: README's Quick start in a clean shell from the clone's parent folder, what a
run prints and keeps in train.log, and no empty run folder after a config error."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

# README's Quick start, run below as written (with a tiny data set and one short epoch added)
ACTIVATE = ". .venv/bin/activate"
FIRST_RUN = "python -m fmnist.train model=rnn trainer=cpu_fast trainer.max_epochs=5"
LIST = "python -m fmnist"


def test_the_quick_start_commands_are_the_readmes():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme[readme.index("## Quick start") : readme.index("## Training")]
    for command in (ACTIVATE, FIRST_RUN, LIST):
        assert f"\n{command} " in quick_start or f"\n{command}\n" in quick_start, command


def test_the_quick_start_works_in_a_clean_shell_from_the_clones_parent_folder(tmp_path, tiny_root):
    """No inherited environment (PATH without .venv, no PYTHONPATH), the current folder the one that
    holds a clone named fmnist with a data/ folder in it: the package is still fmnist's, not the clone."""
    parent = tmp_path / "parent"
    (parent / "fmnist" / "data").mkdir(parents=True)  # a clone's folder, as after a first run in it
    run = tmp_path / "run"
    script = (
        f"set -e; cd {ROOT}; {ACTIVATE}; cd {parent}; "
        f"{FIRST_RUN} debug=tiny data.root={tiny_root} data.search_dirs=[] hydra.run.dir={run}; {LIST}"
    )
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "training rnn (135,498 parameters): SGD lr 0.01, batch 50, 5 epochs" in out
    assert "Epoch 1/5 - " in out and "Epoch 5/5 - " in out and "val/acc" in out
    assert f"run folder: {run}" in out and "test accuracy: " in out
    assert f"python -m fmnist.evaluate ckpt_path={run}/checkpoints/epoch_00" in out  # epochs count from 1
    assert f"tensorboard --logdir {run}/tensorboard" in out
    assert "Tip" not in out and "Test metric" not in out  # Lightning's advertisement and its test table
    assert "fmnist commands" in out and "  predict " in out  # `python -m fmnist`
    log = (run / "train.log").read_text()
    for line in ("GPU available", "training rnn", "Epoch 5/5 - ", "macro avg", "test accuracy: ", "next:"):
        assert line in log, line


def test_a_config_error_leaves_no_run_folder(tmp_path):
    run = tmp_path / "run"
    result = run_cli("fmnist.train", "data.batch_size=abc", f"hydra.run.dir={run}", cwd=tmp_path, timeout=120)
    assert result.returncode != 0 and result.stderr.startswith("error: data.batch_size=abc")
    assert not run.exists()


def test_a_config_error_leaves_an_existing_folder_as_it_was(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    result = run_cli("fmnist.train", "data.batch_size=abc", f"hydra.run.dir={run}", cwd=tmp_path, timeout=120)
    assert result.returncode != 0 and result.stderr.startswith("error: data.batch_size=abc")
    assert [p.name for p in run.iterdir()] == ["notes.txt"]  # checked before Hydra writes .hydra/ or train.log


def test_a_diverged_run_keeps_its_error_in_train_log(tmp_path, tiny_root):
    run = tmp_path / "run"
    result = run_cli(
        "fmnist.train",
        "model=rnn",
        "debug=tiny",
        f"data.root={tiny_root}",
        "data.search_dirs=[]",
        "model.optimizer.lr=1e30",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode != 0 and "training diverged" in result.stderr
    log = (run / "train.log").read_text()
    assert "error: training diverged" in log and "training rnn" in log


def test_tensorboard_curves_count_epochs_from_one_and_a_partial_epoch_is_recorded(train_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fmnist.training.fit import train

    metrics = train(train_cfg("rnn", "trainer.max_epochs=2", "trainer.limit_train_batches=2"))
    assert "step" not in metrics  # TensorBoard's x value, not a figure of the run
    assert (metrics["epoch_images"], metrics["train_images"]) == (100, 360)  # 2 batches of 50: part of an epoch
    assert metrics["train/loss"] > 0.1 and metrics["train/acc"] > 0  # the epoch's figures, not cleared ones
    named = [p.name for p in (tmp_path / "tensorboard").iterdir()]  # TensorBoard's run name says what ran
    assert named == ["rnn,seed=42,debug=tiny,trainer.limit_train_batches=2,trainer.max_epochs=2"]
    events = EventAccumulator(str(tmp_path / "tensorboard" / named[0]), size_guidance={"scalars": 0})
    events.Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"):
        assert steps[tag] == [1, 2], (tag, steps[tag])
    assert steps["test/acc"] == steps["test/macro_f1"] == steps["train_seconds"] == [2]
    hparams = events.PluginTagToContent("hparams")  # the HPARAMS entry (no second value at step 0 above)
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert "epoch" not in steps  # Lightning's own 0-based epoch counter is not plotted
