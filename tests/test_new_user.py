"""What a new user trips over, each found by following README literally (issue 29)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, assert_one_error_line, run_cli

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize(
    "command, override, named",
    [
        ("fmnist.train", "model=nope", "cnn"),
        ("fmnist.train", "trainer=gpu_fastest", "cpu_fast"),
        ("fmnist.train", "model=cnn,nope", "rnn"),
        ("fmnist.tune", "pruner=nope", "median"),
    ],
)
def test_an_unknown_config_choice_is_one_line_naming_the_choices(tmp_path, command, override, named):
    result = run_cli(command, override, cwd=tmp_path)
    assert_one_error_line(result, override, named)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("command", ["fmnist.train", "fmnist.evaluate"])
def test_help_into_a_closed_pipe_ends_quietly(tmp_path, command):
    # `true` exits at once without reading: every write of the command meets a closed pipe
    shell = f"{sys.executable} -m {command} --help | true"
    result = subprocess.run(shell, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ENV)
    assert "Error" not in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    "overrides, folder", [(["model=rnn"], "outputs/rnn/"), (["experiment=speedrun"], "outputs/speedrun/")]
)
def test_a_run_folder_is_named_as_the_run_is(overrides, folder):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from fmnist.utils.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert OmegaConf.select(cfg, "hydra.run.dir").startswith(folder)
    finally:
        HydraConfig.instance().cfg = None


def _untrained_checkpoint(path):
    import torch

    from fmnist.models import SimpleRNN

    model = SimpleRNN()  # untrained: what it answers does not matter here
    state = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "fmnist_model": "SimpleRNN"}
    torch.save(state, path)


def test_predict_says_when_some_inputs_failed_and_names_an_empty_file(tmp_path):
    from PIL import Image

    _untrained_checkpoint(tmp_path / "model.ckpt")
    photos = tmp_path / "photos"
    photos.mkdir()
    shirt = Image.new("L", (56, 56), 255)
    shirt.paste(40, (12, 8, 44, 50))  # a dark garment on white, as a shop photo
    shirt.save(photos / "shirt.png")
    (photos / "empty.png").write_bytes(b"")
    (photos / "notes.png").write_text("not an image")
    args = ["ckpt_path=model.ckpt", "inputs=photos", "gate=false"]
    result = run_cli("fmnist.predict", *args, "output_dir=out", cwd=tmp_path)
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: 2 of 3")
    rows = (tmp_path / "out" / "predictions.csv").read_text()
    assert "empty (0 bytes)" in rows and "shirt.png" in rows
    (photos / "empty.png").unlink()
    (photos / "notes.png").unlink()
    assert run_cli("fmnist.predict", *args, "output_dir=out2", cwd=tmp_path).returncode == 0


def test_export_says_what_the_exported_model_expects(tmp_path):
    import json

    from fmnist.data.idx import CLASS_NAMES

    _untrained_checkpoint(tmp_path / "model.ckpt")
    args = ["ckpt_path=model.ckpt", "format=torchscript", "data.search_dirs=[]", f"data.root={tmp_path / 'no'}"]
    result = run_cli("fmnist.export", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    card = json.loads((tmp_path / "model.ts.pt.json").read_text())
    assert card["input"]["shape"] == ["batch", 1, 28, 28] and card["input"]["range"] == [0.0, 1.0]
    assert card["output"]["name"] == "logits" and card["classes"] == list(CLASS_NAMES)
    assert "model.ts.pt.json" in result.stdout and "[0, 1]" in result.stdout


def test_evaluate_draws_the_curves_up_to_the_evaluated_checkpoint(tmp_path, monkeypatch):
    import torch

    import fmnist.analysis.reports as reports
    from fmnist.models.checkpoint import load_model

    _untrained_checkpoint(tmp_path / "model.ckpt")
    state = torch.load(tmp_path / "model.ckpt", weights_only=True)
    torch.save({**state, "epoch": 1}, tmp_path / "epoch_002.ckpt")  # Lightning's epoch index: the second
    model = load_model(tmp_path / "epoch_002.ckpt")
    assert model.epochs_trained == 2
    drawn = {}
    monkeypatch.setattr(reports, "read_curves", lambda folder: {"val/acc": [0.5, 0.6, 0.7, 0.8]})
    monkeypatch.setattr(reports, "curves_figure", lambda curves, title: drawn.update(curves) or reports.plt.figure())
    images, labels = torch.zeros(4, 1, 28, 28), torch.arange(4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)
    (tmp_path / "tb").mkdir()
    names = [f"class {i}" for i in range(10)]
    reports.write_reports(model, loader, names, tmp_path / "eval", tensorboard_dir=tmp_path / "tb", epochs=2)
    assert drawn == {"val/acc": [0.5, 0.6]}


def test_tensorboard_hparams_lead_with_what_the_run_chose():
    from omegaconf import OmegaConf

    from fmnist.models import CNN, SpeedNet
    from fmnist.training.report import hparams_for_tensorboard

    cfg = OmegaConf.create({"name": "cnn", "seed": 1, "data": {"batch_size": 100, "val_fraction": 0.1}})
    cfg.trainer = {"max_epochs": 3}
    params = hparams_for_tensorboard(cfg, CNN(optimizer={"_target_": "torch.optim.SGD", "lr": 0.1}))
    assert list(params)[:4] == ["model", "seed", "batch_size", "max_epochs"] and params["optimizer/lr"] == 0.1
    assert not {"label_smoothing", "lr_schedule", "lr_triangle"} & set(params)  # a CNN run never chose them
    speedrun = SpeedNet(optimizer={"_target_": "torch.optim.SGD", "lr": 0.2}, label_smoothing=0.2)
    assert hparams_for_tensorboard(cfg, speedrun)["label_smoothing"] == 0.2


def test_the_plan_counts_an_epoch_in_batches(finished_tiny_run):
    log = (finished_tiny_run / "train.log").read_text()
    assert "1 epoch of 8 batches" in log  # debug=tiny: trainer.limit_train_batches=8 of the tiny data


def test_the_comparison_page_captions_its_figures_and_labels_reduced_runs(tmp_path):
    import json

    from tests.conftest import completed_metrics

    for seed, acc in ((1, 0.80), (2, 0.82)):
        run = tmp_path / "runs" / f"cnn_{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps(completed_metrics(seed=seed, **{"test/acc": acc})))
    result = run_cli("fmnist.compare", "runs", "--out", "report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    page = (tmp_path / "report" / "comparison.html").read_text()
    assert "<figcaption>Per-class F1 on the test set</figcaption>" in page and "<figcaption>per_class_f1<" not in page
    assert "| 1 of 150 (reduced) |" in (tmp_path / "report" / "comparison.md").read_text()


COMPOSED = {"paths", "data"}
TRAINING = COMPOSED | {"augment", "trainer", "logger", "callbacks", "optimizer", "model", "experiment", "debug"}


@pytest.mark.parametrize(
    "command, groups",
    [
        ("fmnist.train", TRAINING),
        ("fmnist.evaluate", COMPOSED),
        ("fmnist.cluster", COMPOSED),
        ("fmnist.export", COMPOSED),
        ("fmnist.serve", COMPOSED),
        ("fmnist.explore", COMPOSED),
        ("fmnist.predict", COMPOSED),  # the garment gate is fitted on the data
        ("fmnist.compare", set()),
        ("fmnist.reproduce", set()),
        ("fmnist.tune", set()),
    ],
)
def test_help_lists_only_the_config_groups_the_command_composes(tmp_path, command, groups):
    result = run_cli(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    section = result.stdout.partition("== Configuration groups ==")[2].partition("== Config ==")[0]
    listed = {line.split(":")[0] for line in section.splitlines() if ": " in line} - {"none"}
    assert listed == groups, section
    assert not list(tmp_path.iterdir())  # --help writes nothing
