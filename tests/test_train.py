"""Training through the real Hydra config: run folder contents, checkpoints, CLI errors, multirun."""

import json
from types import SimpleNamespace

import pytest
import torch

from fmnist.models import CNN, BiLSTM, SimpleRNN
from fmnist.training import console as console_module
from fmnist.training.console import RunConsole, duration
from fmnist.training.fit import train
from fmnist.training.progress import EpochProgressBar
from fmnist.utils.errors import FmnistError
from tests.conftest import (
    assert_error_names,
    assert_one_error_line,
    compose_train,
    run_cli,
    write_tiny_fashion_mnist,
)

METRIC_KEYS = {
    "model",
    "seed",
    "device",
    "epochs",
    "test/acc",
    "test/loss",
    "val/acc_best",
    "train_seconds",
    "epoch_seconds",
    "params_trainable",
    "params_total_keras",
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, cls, trainable", [("cnn", CNN, 305_978), ("rnn", SimpleRNN, 135_370), ("bilstm", BiLSTM, 1_340_042)]
)
def test_short_training_leaves_checkpoints_events_and_metrics(train_cfg, tmp_path, name, cls, trainable):
    cfg = train_cfg(name, "trainer.max_epochs=2")
    metrics = train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert METRIC_KEYS <= saved.keys() and saved == json.loads(json.dumps(metrics))
    assert saved["model"] == name and saved["epochs"] == 2 and len(saved["epoch_seconds"]) == 2
    assert saved["params_trainable"] == trainable
    assert 0 <= saved["test/acc"] <= 1 and saved["val/acc_best"] >= saved["val/acc"] - 1e-6
    assert (tmp_path / "checkpoints" / "last.ckpt").exists() and saved["best_checkpoint"]
    # one TensorBoard run, named for what it is: the model, the seed, the run's overrides
    assert [p.name for p in (tmp_path / "tensorboard").iterdir()] == [f"{name},seed=42,debug=tiny,trainer.max_epochs=2"]
    assert list((tmp_path / "tensorboard").glob("*/events.out.tfevents.*"))
    assert (tmp_path / "model_summary.md").read_text().count("|") > 10
    # checkpoints hold plain values: loadable with weights_only=True and without Hydra
    best = tmp_path / saved["best_checkpoint"]  # stored relative to the run folder
    assert saved["best_checkpoint"].startswith("checkpoints/epoch_")
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["hyper_parameters"]["optimizer"]["lr"] == cfg.model.optimizer.lr
    model = cls.load_from_checkpoint(best, weights_only=True)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.slow
def test_the_tiny_task_is_learned(train_cfg, tmp_path):
    metrics = train(train_cfg("bilstm", "trainer.max_epochs=3"))
    assert metrics["test/acc"] > 0.5  # bands per class: chance is 0.1


def test_trainer_config_lists_every_trainer_argument():
    import inspect

    import lightning as L

    names = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    cfg = compose_train([])
    assert names <= set(cfg.trainer), "trainer.<arg>= must override any Trainer argument"
    assert compose_train(["trainer.limit_train_batches=3"]).trainer.limit_train_batches == 3


def test_recipes_come_with_each_model():
    for name, batch, epochs, optimizer, lr in [
        ("cnn", 100, 150, "fmnist.models.optim.KerasRMSprop", 1e-4),
        ("rnn", 65, 25, "torch.optim.SGD", 0.01),
        ("bilstm", 64, 20, "fmnist.models.optim.KerasAdam", 1e-3),
        ("bilstm_stated", 64, 20, "fmnist.models.optim.KerasAdam", 1e-2),
    ]:
        cfg = compose_train([f"model={name}"])
        assert (cfg.data.batch_size, cfg.trainer.max_epochs) == (batch, epochs)
        assert (cfg.model.optimizer._target_, cfg.model.optimizer.lr) == (optimizer, lr)
    cfg = compose_train(["model=cnn", "optimizer=adam", "data.batch_size=7"])
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.data.batch_size == 7


@pytest.mark.parametrize("override", ["data.batch_size=0", "data.val_fraction=1.5", "trainer.max_epochs=0"])
def test_out_of_range_values_are_rejected_before_loading_data(train_cfg, override):
    cfg = train_cfg("rnn", override, "data.root=/nonexistent")
    with pytest.raises(FmnistError) as info:
        train(cfg)
    assert_error_names(str(info.value), override)  # the key with its bad value, as typed


@pytest.mark.slow
def test_cli_bad_values_print_one_line(tmp_path):
    result = run_cli("fmnist.train", "data.batch_size=0", cwd=tmp_path)
    assert result.returncode != 0
    assert_one_error_line(result, "data.batch_size=0")
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_cli_unknown_model_names_the_choices(tmp_path):
    result = run_cli("fmnist.train", "model=nope", cwd=tmp_path, timeout=60)
    assert result.returncode != 0
    assert_one_error_line(result, "model=nope", "cnn", "rnn", "bilstm")


@pytest.mark.slow
def test_cli_missing_data_is_one_line_without_traceback(tmp_path):
    result = run_cli("fmnist.train", "model=rnn", "data.search_dirs=[]", cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert_one_error_line(result, "Fashion-MNIST", "not found", "data.download=true")


@pytest.mark.slow
def test_cli_multirun_gives_each_job_its_folder_and_metrics(tmp_path, tiny_root):
    result = run_cli(
        "fmnist.train",
        "-m",
        "model=cnn,rnn",
        f"data.root={tiny_root}",
        "data.search_dirs=[]",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = sorted((tmp_path / "outputs" / "multirun").glob("*/*/metrics.json"))
    assert [json.loads(p.read_text())["model"] for p in jobs] == ["cnn", "rnn"]
    assert all((p.parent / ".hydra" / "overrides.yaml").exists() for p in jobs)


@pytest.mark.slow
def test_cli_single_run_folder_is_named_by_model_and_time(tmp_path):
    write_tiny_fashion_mnist(tmp_path / "data" / "FashionMNIST" / "raw")
    result = run_cli(
        "fmnist.train",
        "model=rnn",
        "trainer.max_epochs=1",
        "data.search_dirs=[]",
        "trainer.accelerator=cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "rnn").iterdir()
    assert len(run.name.split("_")[-1]) == 6  # microseconds: two runs in the same second never share a folder
    assert {"metrics.json", "checkpoints", "tensorboard", ".hydra"} <= {p.name for p in run.iterdir()}


@pytest.mark.slow
def test_gradient_clipping_is_a_trainer_override(train_cfg):
    # the same lr diverges without clipping: tests/test_reliability.py
    metrics = train(
        train_cfg("rnn", "trainer.max_epochs=1", "model.optimizer.lr=1e6", "trainer.gradient_clip_val=1e-6")
    )
    assert metrics["status"] == "completed"


@pytest.mark.slow
@pytest.mark.parametrize("flush", [True, False])
def test_denormals_are_flushed_like_tensorflow_unless_turned_off(train_cfg, flush):
    # Keras on TensorFlow computes 1e-39 * 1.0 = 0 on the CPU: its threads flush denormals to zero.
    train(
        train_cfg(
            "rnn",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1",
            "test=false",
            f"flush_denormal={str(flush).lower()}",
        )
    )
    assert (torch.full((4,), 1e-39) * 1.0).eq(0).all().item() is flush


@pytest.mark.slow
def test_the_progress_bar_counts_epochs_from_one(train_cfg, capfd):
    """Keras and the study count epochs from 1: the bar says 'Epoch 1/2', 'Epoch 2/2', never 'Epoch 0'."""
    from fmnist.training.fit import train

    train(train_cfg("rnn", "trainer.max_epochs=2", "trainer.enable_progress_bar=true", "test=false"))
    out = capfd.readouterr().out  # Lightning's tqdm bars write to stdout
    assert "Epoch 1/2" in out and "Epoch 2/2" in out
    assert "Epoch 0" not in out
    assert "ETA=" in out  # the whole run's time left
    assert "loss=" in out and "acc=" in out  # the epoch's training figures so far, while it runs


def _trainer_at(epoch: int, steps_done: int, console, steps_per_epoch: int = 6, epochs: int = 150):
    """A stand-in Trainer where RunConsole and the progress bar read it: `steps_done` of epoch `epoch` (0-based)."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=steps_done))
    return SimpleNamespace(
        num_training_batches=steps_per_epoch,
        max_epochs=epochs,
        current_epoch=epoch,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
        callbacks=[console],
        is_global_zero=True,
        training=True,
        sanity_checking=False,
    )


def test_the_printed_estimate_and_the_bars_eta_are_one_figure(monkeypatch, caplog):
    now = [100.0]
    monkeypatch.setattr(console_module.time, "perf_counter", lambda: now[0])
    console = RunConsole()
    console._fit_start = 0.0
    module = SimpleNamespace(device=torch.device("cpu"))
    trainer = _trainer_at(2, 1, console)  # a resume: epoch 3 of 150, its first step of 6 just done
    with caplog.at_level("INFO", logger="fmnist"):
        console.on_train_batch_end(trainer, module)
        console.on_train_batch_end(trainer, module)  # 2 steps in 100 s: 50 s a step
    left = (148 * 6 - 1) * 50  # the steps left, not the epochs started
    assert console.time_left(trainer) == left
    (line,) = [r.getMessage() for r in caplog.records if "estimated" in r.getMessage()]
    assert duration(left) in line
    assert EpochProgressBar()._time_left(trainer) == duration(left)


def test_no_estimate_once_the_run_is_done(monkeypatch, caplog):
    # A short run: the estimate's conditions (2 steps, 5 s) are met only at its last step.
    now = [10.0]
    monkeypatch.setattr(console_module.time, "perf_counter", lambda: now[0])
    console = RunConsole()
    console._fit_start, console._steps = 0.0, 5
    trainer = _trainer_at(1, 3, console, steps_per_epoch=3, epochs=2)
    with caplog.at_level("INFO", logger="fmnist"):
        console.on_train_batch_end(trainer, SimpleNamespace(device=torch.device("cpu")))
    assert not [r for r in caplog.records if "estimated" in r.getMessage()]
    assert console.time_left(trainer) == 0


def test_a_resumes_plan_counts_the_epochs_left(monkeypatch, caplog):
    monkeypatch.setattr(console_module, "keras_param_counts", lambda module: {"total": 10})
    monkeypatch.setattr(console_module, "describe_device", lambda trainer: "cpu")
    monkeypatch.setattr(console_module, "_epoch_batches", lambda trainer: "540 batches")
    for epoch in (0, 2):
        trainer = _trainer_at(epoch, 0, None)
        trainer.datamodule = SimpleNamespace(batch_size=100)
        with caplog.at_level("INFO", logger="fmnist"):
            RunConsole("cnn").on_train_start(trainer, SimpleNamespace(hparams={}))
    fresh, resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training cnn")]
    assert "150 epochs" in fresh
    assert "148" in resumed and "150 epochs" not in resumed
