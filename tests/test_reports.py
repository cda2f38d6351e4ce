"""Reports from runs and checkpoints: numbers, files, TensorBoard entries, the three commands."""

import json
import shutil

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from fmnist.analysis.reports import classification_report, events_dir
from tests.conftest import run_cli

RUN_FILES = {
    "classification_report.md",
    "classification_report.json",
    "confusion_matrix.png",
    "misclassified.png",
    "curves.png",
    "model_summary.md",
    "metrics.json",
}


def test_classification_report_equals_hand_computed_values():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0, 2])
    report = classification_report(torch.eye(3)[predicted], labels, ["a", "b", "c"])
    expected = {
        "a": (0.5, 0.5, 0.5, 2),
        "b": (2 / 3, 1.0, 0.8, 2),
        "c": (1.0, 2 / 3, 0.8, 3),
        "macro avg": (13 / 18, 13 / 18, 0.7, 7),
        "weighted avg": (16 / 21, 5 / 7, 5 / 7, 7),
    }
    for name, (precision, recall, f1, support) in expected.items():
        row = report[name]
        assert row["precision"] == pytest.approx(precision, abs=1e-6)
        assert row["recall"] == pytest.approx(recall, abs=1e-6)
        assert row["f1-score"] == pytest.approx(f1, abs=1e-6)
        assert row["support"] == support
    assert report["accuracy"]["f1-score"] == pytest.approx(5 / 7) and report["accuracy"]["support"] == 7


def test_training_run_leaves_every_report_file(trained_run):
    assert RUN_FILES <= {p.name for p in trained_run.iterdir()}
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert "test/macro_f1" in metrics and "test/f1/Shirt" in metrics
    report = json.loads((trained_run / "classification_report.json").read_text())
    assert report["accuracy"]["f1-score"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert list(report)[-3:] == ["accuracy", "macro avg", "weighted avg"]
    assert "| Shirt |" in (trained_run / "classification_report.md").read_text()


def test_tensorboard_holds_report_images_and_hparams_with_final_metrics(trained_run):
    events = EventAccumulator(str(events_dir(trained_run / "tensorboard")), size_guidance={"images": 0})
    events.Reload()
    assert {"reports/confusion_matrix", "reports/misclassified", "reports/curves"} <= set(events.Tags()["images"])
    content = events.PluginTagToContent("hparams")
    assert "hp_metric" not in events.Tags()["scalars"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {
        "val/acc_best",
        "test/acc",
        "test/macro_f1",
        "train_seconds",
    }
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["model"].string_value == "cnn"
    assert session.hparams["optimizer/lr"].number_value == pytest.approx(1e-4)


@pytest.mark.slow
def test_evaluate_writes_every_file_beside_the_checkpoint(trained_run, tiny_root, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    result = run_cli(
        "fmnist.evaluate", f"ckpt_path={ckpt}", f"data.root={tiny_root}", "data.search_dirs=[]", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert RUN_FILES <= {p.name for p in (ckpt.parent / "eval").iterdir()}
    metrics = json.loads((ckpt.parent / "eval" / "metrics.json").read_text())
    assert metrics["model_class"] == "CNN" and 0 <= metrics["test/acc"] <= 1
    assert "macro avg" in result.stdout
    result = run_cli(
        "fmnist.evaluate",
        f"ckpt_path={ckpt}",
        "split=val",
        f"output_dir={tmp_path / 'v'}",
        f"data.root={tiny_root}",
        "data.search_dirs=[]",
        cwd=tmp_path,
    )
    assert result.returncode == 0 and "val/acc" in json.loads((tmp_path / "v" / "metrics.json").read_text())


@pytest.mark.slow
def test_evaluate_figures_appear_under_the_run_they_evaluate_in_tensorboard(trained_run, tiny_root, tmp_path):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    run = tmp_path / "outputs" / "cnn" / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval*"))
    before = {p: p.read_bytes() for p in run.rglob("events.out.tfevents.*")}
    ckpt = run / "checkpoints" / "last.ckpt"
    args = [f"ckpt_path={ckpt}", f"data.root={tiny_root}", "data.search_dirs=[]"]
    assert run_cli("fmnist.evaluate", *args, cwd=tmp_path).returncode == 0
    events = EventMultiplexer(size_guidance={"images": 0})
    events.AddRunsFromDirectory(str(tmp_path / "outputs"))  # what `tensorboard --logdir outputs` shows
    events.Reload()
    (name,) = events.Runs()  # no extra run for the evaluation
    assert (tmp_path / "outputs" / name).parent == run / "tensorboard"
    images = set(events.GetAccumulator(name).Tags()["images"])
    assert {"reports/confusion_matrix", "evaluate/test/confusion_matrix", "evaluate/test/misclassified"} <= images
    assert {p: p.read_bytes() for p in before} == before  # the run's own event files are untouched


@pytest.mark.slow
def test_evaluate_bad_checkpoints_give_one_clear_error_each(trained_run, tmp_path):
    not_torch = tmp_path / "notes.ckpt"
    not_torch.write_text("hello")
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(3)}, other)
    mismatched = tmp_path / "mismatched.ckpt"
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["fmnist_model"] = "fmnist.models.SimpleRNN"
    checkpoint["hyper_parameters"].pop("conv_dropout")
    checkpoint["hyper_parameters"].pop("dense_dropout")
    torch.save(checkpoint, mismatched)
    for path, expected in [
        (tmp_path / "missing.ckpt", "checkpoint not found"),
        (not_torch, "is not an fmnist checkpoint: not a PyTorch checkpoint file"),
        (other, "is not an fmnist checkpoint: it has no Lightning state_dict"),
        (mismatched, "does not match SimpleRNN"),
    ]:
        result = run_cli("fmnist.evaluate", f"ckpt_path={path}", cwd=tmp_path, timeout=60)
        assert result.returncode != 0
        assert expected in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_compare_two_runs_writes_tables_figures_and_page(trained_run, train_cfg, tmp_path):
    from fmnist.training.fit import train

    train(train_cfg("rnn"))  # a second run, written to tmp_path
    result = run_cli("fmnist.compare", str(trained_run), str(tmp_path), "--out", str(tmp_path / "cmp"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "cmp"
    assert {"comparison.md", "comparison.html", "per_class_f1.png", "acc_vs_time.png"} <= {
        p.name for p in out.iterdir()
    }
    table = (out / "comparison.md").read_text()
    assert "| cnn |" in table and "| rnn |" in table and "| study: cnn |" in table
    page = (out / "comparison.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and 'src="http' not in page


@pytest.mark.slow
def test_compare_with_no_runs_is_a_clear_error(tmp_path):
    result = run_cli("fmnist.compare", str(tmp_path), cwd=tmp_path, timeout=60)
    assert result.returncode != 0 and "no runs" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_explore_prints_the_data_and_writes_samples(tiny_root, tmp_path):
    result = run_cli(
        "fmnist.explore",
        f"data.root={tiny_root}",
        "data.search_dirs=[]",
        f"output_dir={tmp_path}",
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training set: Tensor torch.uint8, images (400, 1, 28, 28)" in result.stdout
    assert "Ankle boot" in result.stdout and "max 255" in result.stdout
    assert (tmp_path / "samples.png").stat().st_size > 10_000


def test_a_one_epoch_curve_has_whole_epochs_on_its_axis():
    from fmnist.analysis.reports import curves_figure

    fig = curves_figure({"train/acc": [0.3], "val/acc": [0.2], "train/loss": [2.0], "val/loss": [2.1]})
    for ax in fig.axes:
        assert ax.get_xlim() == (0.5, 1.5)
        assert [tick for tick in ax.get_xticks() if 0.5 <= tick <= 1.5] == [1.0]


def test_a_run_that_saw_part_of_each_epoch_says_so_in_its_recipe():
    from fmnist.analysis.runs import recipe

    run = {"optimizer": {"_target_": "torch.optim.SGD", "lr": 0.01}, "batch_size": 65}
    assert recipe(run) == "SGD lr=0.01, batch 65"
    assert recipe({**run, "epoch_images": 54_000, "train_images": 54_000}) == "SGD lr=0.01, batch 65"
    partial = recipe({**run, "epoch_images": 3_250, "train_images": 54_000})
    assert partial == "SGD lr=0.01, batch 65, 3,250 of 54,000 images per epoch"
