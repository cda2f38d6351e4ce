"""Broken runs say what went wrong: divergence, broken data, bad config values, unsafe checkpoints,
unwritable output folders."""

import ast
import gzip
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from fmnist.data.datamodule import FashionMNISTDataModule
from fmnist.data.idx import ensure_raw_files, raw_folder
from fmnist.models.checkpoint import load_model
from fmnist.training.callbacks import TrainingDiverged
from fmnist.training.fit import train
from fmnist.utils.errors import FmnistError
from tests.conftest import (
    ROOT,
    assert_error_names,
    assert_one_error_line,
    idx_bytes,
    run_cli,
    tiny_split,
    write_tiny_fashion_mnist,
)

# What a divergence error offers: a lower learning rate, or clipped gradients.
DIVERGED_FIX = ("model.optimizer.lr", "trainer.gradient_clip_val=1.0")
RECORDED: list[tuple[int, float]] = []  # (global step, loss) of every training step, filled by AbsurdLearningRate


class AbsurdLearningRate(L.Callback):
    """Test helper: sets the learning rate to 1e6 from epoch `from_epoch` (0-based); records each step's loss."""

    def __init__(self, from_epoch: int):
        self.from_epoch = from_epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch >= self.from_epoch:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = 1e6

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        RECORDED.append((trainer.global_step, outputs["loss"].item()))


@pytest.mark.slow
def test_divergence_stops_before_its_checkpoint_and_names_epoch_and_step(train_cfg, tmp_path):
    RECORDED.clear()
    cfg = train_cfg(
        "rnn",
        "trainer.max_epochs=4",
        "+callbacks.absurd.from_epoch=1",
        "+callbacks.absurd._target_=tests.test_reliability.AbsurdLearningRate",
    )
    with pytest.raises(TrainingDiverged) as info:
        train(cfg)
    first_bad = next(step for step, loss in RECORDED if not math.isfinite(loss))
    steps_per_epoch = max(step for step, _ in RECORDED) // 2
    assert info.value.step == first_bad > steps_per_epoch and f"step {first_bad};" in str(info.value)
    assert_error_names(str(info.value), "diverged", "epoch 2", "last.ckpt", *DIVERGED_FIX)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["error"] == str(info.value)
    assert (metrics["diverged_epoch"], metrics["diverged_step"], metrics["epochs"]) == (2, first_bad, 1)
    assert metrics["best_checkpoint"].endswith("epoch_001.ckpt") and 0 <= metrics["test/acc"] <= 1
    # the diverged epoch left no checkpoint: last.ckpt is still the good first epoch
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_001.ckpt", "last.ckpt"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (0, steps_per_epoch)
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())


@pytest.mark.slow
def test_divergence_in_the_first_epoch_leaves_no_checkpoint_and_tests_nothing(train_cfg, tmp_path):
    with pytest.raises(TrainingDiverged) as info:
        train(train_cfg("rnn", "trainer.max_epochs=2", "model.optimizer.lr=1e6"))
    assert_error_names(str(info.value), "diverged", "epoch 1", "no checkpoint", *DIVERGED_FIX)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["diverged_epoch"] == 1 and metrics["best_checkpoint"] == ""
    assert "test/acc" not in metrics and not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_early_stopping_is_a_callbacks_config_and_the_run_completes(train_cfg, tmp_path):
    # min_delta 1.0: no epoch after the first can improve val/acc enough, patience 0 stops at once
    metrics = train(
        train_cfg(
            "rnn",
            "trainer.max_epochs=5",
            "callbacks=early_stopping",
            "callbacks.early_stopping.patience=0",
            "callbacks.early_stopping.min_delta=1.0",
        )
    )
    assert metrics["epochs"] == 2 and metrics["status"] == "completed"
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


# ---- broken data -------------------------------------------------------------------------------------------


def _tiny_raw(tmp_path: Path) -> Path:
    return write_tiny_fashion_mnist(raw_folder(tmp_path / "root"))


def _setup(raw: Path) -> None:
    FashionMNISTDataModule(root=str(raw.parents[1]), search_dirs=[]).setup()


@pytest.mark.parametrize(
    "name, content, named",
    [
        ("train-labels-idx1-ubyte", lambda b: gzip.compress(b), ("0x1f8b08", "0x00000801")),
        ("t10k-images-idx3-ubyte", lambda b: idx_bytes(np.zeros((120, 28), np.uint8)), ("0x00000802", "0x00000803")),
        ("train-images-idx3-ubyte", lambda b: b[:-1000], ("truncated", "400x28x28", "313,616", "312,616")),
        ("train-images-idx3-ubyte", lambda b: b[:10], ("truncated", "10 bytes")),
        ("train-images-idx3-ubyte", lambda b: b + b"x", ("longer",)),
        ("train-images-idx3-ubyte", lambda b: idx_bytes(np.zeros((400, 32, 32), np.uint8)), ("32x32", "28x28")),
        (
            "train-labels-idx1-ubyte",
            lambda b: idx_bytes(tiny_split(399, 0)[1]),
            ("399 labels", "train-images-idx3-ubyte", "400 images"),
        ),
        ("t10k-labels-idx1-ubyte", lambda b: idx_bytes(np.full(120, 12)), ("label 12", "0..9")),
    ],
)
def test_a_broken_idx_file_is_one_error_naming_it(tmp_path, name, content, named):
    raw = _tiny_raw(tmp_path)
    (raw / name).write_bytes(content((raw / name).read_bytes()))
    with pytest.raises(FmnistError) as info:
        _setup(raw)
    assert_error_names(str(info.value), str(raw / name), *named)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda b: b[: len(b) // 2], "Compressed file ended"),
        (lambda b: b"not gzip at all", "Not a gzipped file"),
        (lambda b: b[:-8] + bytes(8), "CRC check failed"),
    ],
)
def test_a_damaged_gz_in_a_search_dir_is_one_error_naming_it(tmp_path, damage, reason):
    debian = write_tiny_fashion_mnist(tmp_path / "debian", gz=True)
    gz = debian / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(damage(gz.read_bytes()))
    with pytest.raises(FmnistError) as info:
        ensure_raw_files(tmp_path / "root", search_dirs=[str(debian)])
    assert_error_names(str(info.value), str(gz), "is damaged", reason)


@pytest.mark.slow
def test_cli_broken_data_is_one_line_before_training(tmp_path):
    raw = write_tiny_fashion_mnist(tmp_path / "data" / "FashionMNIST" / "raw")
    labels = raw / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-5])
    result = run_cli("fmnist.train", "model=rnn", "data.search_dirs=[]", "trainer.accelerator=cpu", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert_one_error_line(result, f"data/FashionMNIST/raw/{labels.name}", "truncated", "408 bytes", "403 bytes")
    assert not list(tmp_path.glob("outputs/rnn/*/checkpoints"))


# ---- config values ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "data.batch_size=-1",
        "data.batch_size=abc",
        "data.batch_size=2.5",
        "data.batch_size=null",
        "data.val_fraction=1.5",
        "model.optimizer.lr=0",
        "model.optimizer.lr=nan",
        "trainer.gradient_clip_val=-1",
        "data.download=maybe",
    ],
)
def test_bad_config_values_fail_before_any_data_or_folder_is_touched(train_cfg, tmp_path, no_data_access, override):
    cfg = train_cfg("rnn", f"output_dir={tmp_path / 'run'}", override)
    with pytest.raises(FmnistError) as info:
        train(cfg)
    assert_error_names(str(info.value), override)  # the key with its bad value, as typed
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_wrong_type_is_one_line_before_data(tmp_path):
    result = run_cli("fmnist.train", "data.batch_size=abc", cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert_one_error_line(result, "data.batch_size=abc")
    assert not (tmp_path / "data").exists()


# ---- checkpoints ------------------------------------------------------------------------------------------


class RunsCode:
    """Unpickling this object creates the file `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def _plant_payload(path: Path, marker: Path) -> None:
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["payload"] = RunsCode(marker)
    torch.save(checkpoint, path)


class PlantPayloadInBest(L.Callback):
    """Test helper: after fitting, the best checkpoint carries code, before train() tests it."""

    def __init__(self, marker: str):
        self.marker = Path(marker)

    def on_fit_end(self, trainer, pl_module):
        _plant_payload(Path(trainer.checkpoint_callback.best_model_path), self.marker)


@pytest.fixture
def torch_defaults_to_unsafe_loads(monkeypatch):
    # With this set, torch.load unpickles anything unless the caller passes weights_only=True itself.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def test_load_model_refuses_a_checkpoint_carrying_code(trained_run, tmp_path, torch_defaults_to_unsafe_loads):
    path, marker = tmp_path / "evil.ckpt", tmp_path / "marker"
    shutil.copyfile(trained_run / "checkpoints" / "last.ckpt", path)
    _plant_payload(path, marker)
    with pytest.raises(FmnistError) as info:
        load_model(path)
    assert_error_names(str(info.value), str(path), "refused", "GLOBAL exec")
    assert not marker.exists()


@pytest.mark.slow
def test_training_tests_its_checkpoint_without_running_code(train_cfg, tmp_path, torch_defaults_to_unsafe_loads):
    marker = tmp_path / "marker"
    cfg = train_cfg(
        "rnn",
        "+callbacks.plant._target_=tests.test_reliability.PlantPayloadInBest",
        f"+callbacks.plant.marker={marker}",
    )
    with pytest.raises(Exception, match="Weights only load failed"):
        train(cfg)
    assert not marker.exists()


def test_every_checkpoint_load_in_the_code_passes_weights_only():
    loads = []
    for file in [*ROOT.joinpath("fmnist").rglob("*.py"), *ROOT.joinpath("benchmarks").rglob("*.py")]:
        for node in ast.walk(ast.parse(file.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            is_torch_load = node.func.attr == "load" and ast.unparse(node.func.value) == "torch"
            if is_torch_load or node.func.attr == "load_from_checkpoint" or "ckpt_path" in keywords:
                safe = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
                loads.append((f"{file.relative_to(ROOT)}:{node.lineno}", safe))
    assert loads and [where for where, safe in loads if not safe] == []


# ---- output folders ---------------------------------------------------------------------------------------


def test_an_unwritable_output_folder_fails_at_start_naming_it(train_cfg, tmp_path, no_data_access):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "run"
    with pytest.raises(FmnistError) as info:
        train(train_cfg("rnn", f"output_dir={out}"))
    assert_error_names(str(info.value), str(out), "Not a directory")


def test_a_full_output_disk_fails_at_start_naming_it(train_cfg, tmp_path, no_data_access, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=5 * 2**20))
    with pytest.raises(FmnistError) as info:
        train(train_cfg("rnn", f"output_dir={tmp_path / 'run'}"))
    assert_error_names(str(info.value), str(tmp_path / "run"), "5 MiB", "100 MiB")
