"""Interrupt and resume (SIGTERM in mid-epoch, Ctrl-C, `resume=RUN_DIR`) and determinism on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf

from fmnist.runs.resume import cli_args
from fmnist.training.fit import train
from fmnist.utils.errors import FmnistError
from tests.conftest import ROOT, assert_error_names, compose_train, run_cli

STEPS_PER_EPOCH = 12  # 360 tiny training images in batches of 30
# What may differ between two runs of the same config: timings and where the files are.
NOT_COMPARED = {"train_seconds", "epoch_seconds", "best_checkpoint"}


class PauseAfterStep(L.Callback):
    """Test helper: after training step `step`, touch `marker` and wait until a signal has come."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step != self.step:
            return
        self.marker.touch()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(getattr(c, "requested", False) for c in trainer.callbacks):
            time.sleep(0.02)


class SendSignal(L.Callback):
    """Test helper: sends this process `signum` as training step `step` (1-based) begins."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step - 1:
            os.kill(os.getpid(), self.signum)


@pytest.fixture(autouse=True)
def _keep_thread_count():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _overrides(tiny_root: Path, epochs: int, *extra: str) -> list[str]:
    # One thread: the same float sums in every process, and no slowdown from oversubscribed cores.
    return [
        "model=cnn",
        f"data.root={tiny_root}",
        "data.search_dirs=[]",
        "trainer.accelerator=cpu",
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        "data.batch_size=30",
        "torch_threads=1",
        *extra,
    ]


def _train(overrides: list[str]) -> dict:
    try:
        return train(compose_train(overrides))
    finally:
        GlobalHydra.instance().clear()


def _compared(metrics: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(metrics)).items() if k not in NOT_COMPARED}


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "fmnist.train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_metrics_and_weights_on_the_cpu(tiny_root, tmp_path):
    # Lightning's default trainer.deterministic=null is enough on the CPU.
    runs = [
        _train(_overrides(tiny_root, 2, f"output_dir={tmp_path / name}", "logger={}", "test=false", *extra))
        for name, extra in (("a", []), ("b", []), ("c", ["seed=7"]))
    ]
    assert _compared(runs[0]) == _compared(runs[1])
    assert runs[2]["train/loss"] != runs[0]["train/loss"]
    weights = [
        torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for name in ("a", "b")
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
def test_sigterm_in_mid_epoch_then_resume_equals_an_uninterrupted_run(tiny_root, tmp_path):
    config = _overrides(tiny_root, 2, "trainer.deterministic=true")
    marker, run = tmp_path / "paused", tmp_path / "outputs" / "run"
    pause = [
        f"+callbacks.pause._target_={__name__}.PauseAfterStep",
        f"+callbacks.pause.step={STEPS_PER_EPOCH + 5}",
        f"+callbacks.pause.marker={marker}",
    ]
    process = _cli(*config, *pause, f"hydra.run.dir={run}", cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()[1][-3000:]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert_error_names(
        stderr.strip().splitlines()[-1],
        "interrupted",
        str(run / "checkpoints" / "last.ckpt"),
        f"python -m fmnist.train resume={run}",
    )
    assert "stopping after this batch" in stderr  # acknowledged when it came, before the step ended
    assert f"python -m fmnist.train resume={run}" in (run / "train.log").read_text()  # the log keeps the command
    # The signal came during step 18, in the second epoch: saved at its end.
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS_PER_EPOCH + 6
    assert not (run / "metrics.json").exists()

    # A resume takes no class from the run's recorded overrides: the test's pause callback goes.
    recorded = [o for o in OmegaConf.load(run / ".hydra" / "overrides.yaml") if "callbacks.pause" not in o]
    OmegaConf.save(OmegaConf.create(recorded), run / ".hydra" / "overrides.yaml")
    process = _cli(f"resume={run}", cwd=tmp_path)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["steps"] == 2 * STEPS_PER_EPOCH and len(resumed["epoch_seconds"]) == 2
    (named,) = (run / "tensorboard").iterdir()  # one TensorBoard run, written by both processes
    events = list(named.iterdir())
    assert len({f.name.rsplit(".", 2)[1] for f in events if f.name.startswith("events.out.tfevents.")}) == 2
    assert list((tmp_path / "outputs").iterdir()) == [run]  # no new run folder

    uninterrupted = _train([*config, f"output_dir={tmp_path / 'whole'}", "logger={}"])
    assert _compared(resumed) == _compared(uninterrupted)

    # A finished run goes on with more epochs, recorded in its config for the next resume.
    more = _train([f"resume={run}", "trainer.max_epochs=3", "test=false"])
    assert more["steps"] == 3 * STEPS_PER_EPOCH and len(more["epoch_seconds"]) == 3
    assert "max_epochs: 3" in (run / ".hydra" / "config.yaml").read_text()
    assert "trainer.max_epochs=3" in (run / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.slow
def test_ctrl_c_saves_at_the_end_of_the_step_and_gives_the_handler_back(tiny_root, tmp_path):
    handler = signal.getsignal(signal.SIGINT)
    ctrl_c = [
        f"+callbacks.ctrl_c._target_={__name__}.SendSignal",
        "+callbacks.ctrl_c.step=6",
        f"+callbacks.ctrl_c.signum={int(signal.SIGINT)}",
    ]
    with pytest.raises(SIGTERMException):
        _train(_overrides(tiny_root, 1, f"output_dir={tmp_path}", "logger={}", *ctrl_c))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert signal.getsignal(signal.SIGINT) is handler


def _run_folder(run: Path, checkpoint: bytes | None = None) -> Path:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    if checkpoint is not None:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(checkpoint)
    return run


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda run: None, ("no such folder",)),
        (lambda run: run.mkdir(), ("not a training run folder", ".hydra/config.yaml")),
        (_run_folder, ("last.ckpt", "does not exist")),
        (lambda run: _run_folder(run, b"PK\x03\x04 cut short"), ("last.ckpt", "is damaged", "epoch_NNN.ckpt")),
    ],
)
def test_resume_names_what_is_missing_or_damaged(tmp_path, make, named):
    run = tmp_path / "run"
    make(run)
    with pytest.raises(FmnistError) as info:
        _train([f"resume={run}"])
    assert_error_names(str(info.value), f"resume={run}", *named)
    with pytest.raises(FmnistError) as info:  # on the command line, before Hydra makes any folder
        cli_args(["fmnist.train", f"resume={run}"])
    assert_error_names(str(info.value), f"resume={run}", *named)


def test_resume_refuses_overrides_that_change_the_run(tmp_path):
    run = tmp_path / "run"
    _run_folder(run)
    (run / "checkpoints").mkdir()
    torch.save({}, run / "checkpoints" / "last.ckpt")
    with pytest.raises(FmnistError) as info:
        _train([f"resume={run}", "model=rnn", "data.batch_size=7", "trainer.max_epochs=3"])
    assert_error_names(str(info.value), "model=rnn", "data.batch_size=7", "cannot change")
    assert "trainer.max_epochs=3" not in str(info.value)  # that override may change: it is not refused
    with pytest.raises(FmnistError) as info:
        _train([f"resume={run}", "trainer.max_epochs=0"])
    assert_error_names(str(info.value), "trainer.max_epochs=0")
    assert (run / ".hydra" / "config.yaml").read_text() == "seed: 1\n"  # a refused value is not recorded
    assert cli_args(["fmnist.train", f"resume={run}"])[-2:] == ["hydra.run.dir=${resume}", "hydra.output_subdir=null"]


@pytest.mark.slow
@pytest.mark.parametrize("batch", [18, 13])  # in the second chunk of epoch 2, and in its first
def test_fast_path_stops_within_its_chunk_and_resumes_to_the_uninterrupted_run(tiny_root, tmp_path, batch):
    # 12 batches an epoch in chunks of 5 (5 + 5 + 2), with flips and dropout: the resumed chunk's batches must
    # get the flips and dropout draws they would have had.
    fast = ["trainer=cpu_fast", "data.batches_per_step=5", "data.eval_batch_size=30", "augment=flip", "logger={}"]
    config = _overrides(tiny_root, 2, "trainer.deterministic=true", *fast)
    ctrl_c = [
        f"+callbacks.ctrl_c._target_={__name__}.SendSignal",
        f"+callbacks.ctrl_c.step={batch}",
        f"+callbacks.ctrl_c.signum={int(signal.SIGINT)}",
    ]
    run = tmp_path / "run"
    result = run_cli("fmnist.train", *config, *ctrl_c, f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode != 0
    assert_error_names(result.stderr.strip().splitlines()[-1], "interrupted", f"resume={run}")
    # Ctrl-C came as the chunk holding `batch` began: saved after that one batch, not at the chunk's end.
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == batch

    recorded = [o for o in OmegaConf.load(run / ".hydra" / "overrides.yaml") if "callbacks.ctrl_c" not in o]
    OmegaConf.save(OmegaConf.create(recorded), run / ".hydra" / "overrides.yaml")
    result = run_cli("fmnist.train", f"resume={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["steps"] == 2 * STEPS_PER_EPOCH
    uninterrupted = _train([*config, f"output_dir={tmp_path / 'whole'}"])
    assert _compared(resumed) == _compared(uninterrupted)
