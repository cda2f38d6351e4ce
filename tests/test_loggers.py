"""logger=: TensorBoard, CSV and MLflow, one or several at once (`logger=[tensorboard,csv]`); an MLflow run on a
server gets the metrics, the parameters and the report files, and a resume logs on into it."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from fmnist.training.fit import train
from tests.conftest import assert_one_error_line, free_port, run_cli


def test_csv_beside_tensorboard_writes_metrics_and_hparams(train_cfg, tmp_path):
    train(train_cfg("rnn", "logger=[tensorboard,csv]", "test=false"))
    (version,) = (tmp_path / "csv").iterdir()
    with (version / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert any(row["val/acc"] for row in rows) and any(row["train/loss"] for row in rows)
    hparams = yaml.safe_load((version / "hparams.yaml").read_text())
    assert hparams["seed"] == 42 and hparams["model"] == "rnn"
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("choice", ["logger=nope", "logger=[csv,nope]"])
def test_an_unknown_logger_is_one_line(tmp_path, choice):
    result = run_cli("fmnist.train", choice, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_error_line(result, choice, "nope")
    assert not (tmp_path / "run").exists()


@contextlib.contextmanager
def mlflow_server(folder: Path):
    """A throw-away `mlflow server` on a free loopback port, its store and artifacts in `folder`: its URL."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder)]
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/health", timeout=5).status == 200:
                    break
            assert server.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()[-2000:]
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.slow
def test_an_mlflow_server_gets_the_run_and_its_resume(tiny_root, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = tmp_path / "store"
    store.mkdir()
    run = tmp_path / "run"
    with mlflow_server(store) as url:
        args = ["model=rnn", "debug=tiny", f"data.root={tiny_root}", "data.search_dirs=[]", "logger=mlflow"]
        result = run_cli(
            "fmnist.train", *args, f"logger.mlflow.tracking_uri={url}", f"hydra.run.dir={run}", cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
        client = MlflowClient(url)
        (found,) = client.search_runs([client.get_experiment_by_name("fmnist").experiment_id])
        assert found.data.params["seed"] == "42" and "test/acc" in found.data.metrics
        assert "reports/confusion_matrix.png" in [a.path for a in client.list_artifacts(found.info.run_id, "reports")]
        assert [m.step for m in client.get_metric_history(found.info.run_id, "val/acc")] == [1]

        result = run_cli("fmnist.train", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
        assert_one_error_line(result, "tracking_uri", url)  # the store is the command line's to say, not the run's
        store_given = f"++logger.mlflow.tracking_uri={url}"
        result = run_cli("fmnist.train", f"resume={run}", "trainer.max_epochs=2", store_given, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        (resumed,) = client.search_runs([found.info.experiment_id])  # the same MLflow run, its metrics go on
        assert resumed.info.run_id == found.info.run_id
        assert [m.step for m in client.get_metric_history(found.info.run_id, "val/acc")] == [1, 2]
