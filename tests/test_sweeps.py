"""Multiruns through Hydra's sweepers and launchers, the sweep summary, and DDP on CPU processes."""

import json
import math

import pytest

from tests.conftest import N_TRAIN, run_cli

pytestmark = pytest.mark.slow  # every test runs Hydra multiruns of fmnist.train in a subprocess

TINY = ["data.search_dirs=[]", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "torch_threads=1"]


def sweep_dir(tmp_path, kind="multirun"):
    (folder,) = (tmp_path / "outputs" / kind).iterdir()
    return folder


def summary_rows(folder):
    lines = (folder / "sweep_summary.csv").read_text().splitlines()
    return [line.split(",") for line in lines[1:]]


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_multirun_over_two_models_with_each_launcher(tmp_path, tiny_root, launcher):
    extra = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    extra += ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    # joblib and submitit start worker processes that outlive a command run in-process
    args = ("fmnist.train", "-m", "model=cnn,rnn", f"data.root={tiny_root}", *TINY, *extra)
    result = run_cli(*args, cwd=tmp_path, process=launcher != "basic")
    assert result.returncode == 0, result.stderr[-3000:]
    folder = sweep_dir(tmp_path)
    metrics = sorted(json.loads(p.read_text())["model"] for p in folder.glob("*/metrics.json"))
    assert metrics == ["cnn", "rnn"]
    assert "2 completed, 0 failed" in (folder / "sweep_summary.md").read_text()
    assert len(summary_rows(folder)) == 2


def test_grid_sweep_on_any_key_and_a_failing_job_keeps_the_others(tmp_path, tiny_root):
    result = run_cli(
        "fmnist.train",
        "-m",
        "model=rnn",
        "model.optimizer.lr=0.001,0.01",
        "data.batch_size=50,0",
        f"data.root={tiny_root}",
        *TINY,
        cwd=tmp_path,
    )
    assert result.returncode != 0  # the sweep reports the failure...
    folder = sweep_dir(tmp_path)
    summary = (folder / "sweep_summary.md").read_text()
    assert "2 completed, 2 failed" in summary  # ...after running every job
    assert summary.count("data.batch_size=0 is out of range") == 2
    assert len(list(folder.glob("*/metrics.json"))) == 2
    assert len({p.parent for p in folder.glob("*/job_status.json")}) == 4  # one folder per job


def test_experiment_compare_is_one_multirun_of_the_three_recipes(tmp_path, tiny_root):
    result = run_cli("fmnist.train", "experiment=compare", "seed=1", f"data.root={tiny_root}", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = sweep_dir(tmp_path)
    models = sorted(json.loads(p.read_text())["model"] for p in folder.glob("*/metrics.json"))
    assert models == ["bilstm", "cnn", "rnn"]
    assert "| study: cnn |" in (folder / "comparison.md").read_text()


def test_ddp_on_two_cpu_processes_shards_the_data_and_reports_global_metrics(tmp_path, tiny_root):
    result = run_cli(
        "fmnist.train",
        "trainer=ddp_cpu",
        "model=cnn",
        "hydra.run.dir=ddp",
        "data.batch_size=50",
        f"data.root={tiny_root}",
        *TINY,
        cwd=tmp_path,
        process=True,  # Lightning starts the second rank by running the command line again
    )
    assert result.returncode == 0, result.stderr[-3000:]
    single = run_cli(
        "fmnist.train",
        "model=cnn",
        "hydra.run.dir=single",
        "data.batch_size=50",
        f"data.root={tiny_root}",
        *TINY,
        cwd=tmp_path,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert ddp.keys() == one.keys()
    n_train = N_TRAIN - N_TRAIN // 10
    assert one["steps"] == math.ceil(n_train / 50) and ddp["steps"] == math.ceil(n_train / 2 / 50)
    assert ddp["device"].startswith("2x cpu")
    # test/acc is synced over both ranks: it equals the report computed on the full test set
    report = json.loads((tmp_path / "ddp" / "classification_report.json").read_text())
    assert ddp["test/acc"] == pytest.approx(report["accuracy"]["f1-score"], abs=1e-6)
