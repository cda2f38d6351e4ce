"""`fmnist.tune`: search spaces from their configs, bad input in one line before any trial, a search whose trials
are run folders, resuming it, pruning, and two workers sharing one study on a real, throw-away PostgreSQL."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, assert_error_names, assert_one_error_line, compose_train, free_port, run_cli

optuna = pytest.importorskip("optuna", reason="the search needs pip install -e '.[sweeps]'")

from fmnist.tuning.search import split_args  # noqa: E402
from fmnist.tuning.space import search_space  # noqa: E402
from fmnist.utils.errors import FmnistError  # noqa: E402

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def tiny(root: Path, *extra: str) -> list[str]:
    return ["model=rnn", f"data.root={root}", "data.search_dirs=[]", "debug=tiny", *extra]


@pytest.mark.parametrize("model", MODELS)
def test_every_model_has_a_search_space_of_its_own_keys(model):
    cfg = compose_train([f"model={model}", "output_dir=."])
    space = OmegaConf.load(CONF / "search_space" / f"{model}.yaml")
    if "defaults" in space:  # bilstm_stated reuses the BiLSTM's
        space = OmegaConf.load(CONF / "search_space" / f"{space.defaults[0].split('@')[0]}.yaml")
    distributions = search_space(space, cfg, model)
    assert "model.optimizer.lr" in distributions and distributions["model.optimizer.lr"].log


def test_a_search_space_is_checked_key_by_key():
    cfg = compose_train(["model=rnn", "output_dir=."])
    space = search_space({"data.batch_size": "choice(32, 64)", "model.optimizer.lr": "interval(0.001, 0.1)"}, cfg, "s")
    assert space["data.batch_size"].choices == (32, 64) and not space["model.optimizer.lr"].log
    assert search_space({"trainer.max_epochs": "range(1, 5)"}, cfg, "s")["trainer.max_epochs"].high == 4
    for bad, named in (
        ({"model.dense_dropout": "interval(0.1, 0.5)"}, ("model.dense_dropout", "not a key")),
        ({"data.batch_size": "64"}, ("data.batch_size", "'64'", "interval(")),
        ({"data.batch_size": {"low": 1}}, ("data.batch_size", "{'low': 1}", "dict")),
        ({"data.batch_size": "choice(32,"}, ("data.batch_size", "'choice(32,'", "sweep")),
        ({"model.optimizer.lr": "tag(log, interval(0, 1))"}, ("model.optimizer.lr",)),
        ({}, ("empty",)),
    ):
        with pytest.raises(FmnistError) as info:
            search_space(bad, cfg, "s")
        assert_error_names(str(info.value), *named)


def test_the_search_keys_are_told_from_the_trials_keys():
    ours, base = split_args(["model=rnn", "tune.n_trials=3", "pruner=hyperband", "pruner.min_resource=2", "seed=1"])
    assert ours == ["tune.n_trials=3", "pruner=hyperband", "pruner.min_resource=2"] and base == ["model=rnn", "seed=1"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, named",
    [
        (["tune.storage=notaurl"], ("tune.storage=notaurl",)),
        (["tune.storage=postgresql://u:pw@127.0.0.1:1/db"], ("tune.storage=postgresql://u:***@127.0.0.1:1/db",)),
        (["tune.search_space=cnn"], ("fmnist/conf/search_space/cnn.yaml", "model.dense_dropout", "not a key")),
        (["tune.search_space=nope"], ("fmnist/conf/search_space/nope.yaml", "does not exist", "tune.search_space=")),
        (["tune.n_trials=0"], ("tune.n_trials=0",)),
        (["data.batch_size=0"], ("data.batch_size=0",)),
        (["output_dir=x"], ("output_dir", "fmnist.tune", "tune.dir=")),
        (["pruner=nope"], ("pruner=nope", "hyperband")),
        (
            ["model.optimizer.lr=0.01"],
            ("model.optimizer.lr", "fmnist/conf/search_space/rnn.yaml", "tune.search_space="),
        ),
        (["+tune.nope=1"], ("tune.nope", "fmnist.tune")),
    ],
)
def test_bad_input_stops_in_one_line_before_any_trial(tmp_path, tiny_root, args, named):
    result = run_cli("fmnist.tune", *tiny(tiny_root), f"tune.dir={tmp_path / 'study'}", *args, cwd=tmp_path)
    assert result.returncode != 0
    assert_one_error_line(result, *named)
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("trial_*")) and not list(tmp_path.rglob("metrics.json"))
    assert not (tmp_path / "study").exists() or "storage=" not in args[0]  # no empty folder left behind


def test_storage_urls_are_printed_without_their_password():
    from fmnist.tuning.search import _secret_free, shown_url

    assert shown_url("postgresql://u:s3cret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert "secret" not in shown_url("postgresql://u@db/x?password=secret")
    assert shown_url("not a url at all@host") == "host"
    assert _secret_free("could not connect: password s3cret refused", "postgresql://u:s3cret@db/x") == (
        "could not connect: password *** refused"
    )


def test_stored_values_must_be_of_the_dimension_s_type():
    from fmnist.tuning.search import _checked_params

    cfg = compose_train(["model=rnn", "output_dir=."])
    space = search_space(OmegaConf.load(CONF / "search_space" / "rnn.yaml"), cfg, "rnn")
    assert _checked_params({"data.batch_size": 32, "model.optimizer.lr": 0.01}, space, "t")
    for bad in ({"data.batch_size": 32.0}, {"model.optimizer.lr": "0.01"}, {"data.batch_size": True}, {"x": 1}):
        with pytest.raises(FmnistError):
            _checked_params(bad, space, "t")


@pytest.mark.slow
def test_a_study_folder_that_is_a_file_or_holds_another_study_is_refused(tmp_path, tiny_root):
    (tmp_path / "afile").write_text("")
    result = run_cli("fmnist.tune", *tiny(tiny_root), f"tune.dir={tmp_path / 'afile'}", cwd=tmp_path)
    assert_one_error_line(result, f"tune.dir={tmp_path / 'afile'}", "is a file")
    (tmp_path / "other" / "trial_0000").mkdir(parents=True)  # e.g. a study whose optuna.db was deleted
    result = run_cli("fmnist.tune", *tiny(tiny_root), f"tune.dir={tmp_path / 'other'}", cwd=tmp_path)
    assert_one_error_line(result, f"tune.dir={tmp_path / 'other'}", "another study", "trial_0000")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") <= 2, result.stderr


@pytest.mark.slow
def test_a_search_leaves_run_folders_a_summary_and_the_best_as_a_command_and_resumes(tmp_path, tiny_root):
    study = tmp_path / "study"
    args = [*tiny(tiny_root, "trainer.max_epochs=2"), f"tune.dir={study}", "tune.n_trials=2", "tune.sampler_seed=1"]
    result = run_cli("fmnist.tune", *args, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for n in (0, 1):
        run = study / f"trial_{n:04d}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["status"] == "completed" and "test/acc" not in metrics  # trials are not tested
        assert (run / ".hydra" / "config.yaml").is_file() and list((run / "tensorboard").glob("*/events.*"))
        assert "training rnn" in (run / "train.log").read_text()
    loaded = optuna.load_study(study_name="fmnist_rnn", storage=f"sqlite:///{study / 'optuna.db'}")
    best = loaded.best_trial
    best_metrics = json.loads((Path(best.user_attrs["run_dir"]) / "metrics.json").read_text())
    assert best.value == best_metrics["val/acc_best"]
    overrides = list(OmegaConf.load(study / "best.yaml"))
    assert overrides[: len(tiny(tiny_root))] == tiny(tiny_root)
    assert any(o.startswith("model.optimizer.lr=") for o in overrides)
    command = next(line for line in result.stdout.splitlines() if line.startswith("retrain it: "))
    assert command.removeprefix("retrain it: ").startswith("python -m fmnist.train model=rnn")
    assert f"best trial {best.number}, tested once: test/acc" in result.stdout
    summary = (study / "study_summary.md").read_text()
    assert "2 trials, 2 COMPLETE" in summary and str(study / "trial_0001") in summary

    again = run_cli("fmnist.tune", *args, "tune.n_trials=1", cwd=tmp_path, timeout=600)  # the same command: resumed
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(2 trials so far)" in again.stdout and (study / "trial_0002" / "metrics.json").is_file()
    assert "3 trials, 3 COMPLETE" in (study / "study_summary.md").read_text()


@pytest.mark.slow
def test_the_pruner_stops_a_trial_that_cannot_learn_before_its_last_epoch(tmp_path, tiny_root):
    study = tmp_path / "study"
    study.mkdir()
    storage = f"sqlite:///{study / 'optuna.db'}"
    created = optuna.create_study(study_name="fmnist_rnn", storage=storage, direction="maximize")
    created.enqueue_trial({"model.optimizer.lr": 0.04, "data.batch_size": 32})  # learns
    created.enqueue_trial({"model.optimizer.lr": 0.0001, "data.batch_size": 32})  # cannot, in 4 epochs
    args = [*tiny(tiny_root, "trainer.max_epochs=4"), f"tune.dir={study}", "tune.n_trials=2", "tune.test_best=false"]
    result = run_cli("fmnist.tune", *args, "pruner.n_startup_trials=1", "pruner.n_warmup_steps=0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = optuna.load_study(study_name="fmnist_rnn", storage=storage).get_trials()
    assert first.state.name == "COMPLETE" and len(first.intermediate_values) == 4
    assert second.state.name == "PRUNED" and len(second.intermediate_values) < 4, second.intermediate_values
    metrics = json.loads((study / "trial_0001" / "metrics.json").read_text())  # the pruned trial keeps its folder
    assert metrics["status"] == "stopped" and metrics["epochs"] < 4 and "pruned" in metrics["stopped_by"]
    assert "| 1 | PRUNED |" in (study / "study_summary.md").read_text()
    assert "trial 1: PRUNED at the validation of epoch" in result.stdout


@pytest.mark.slow
def test_an_interrupted_search_marks_its_trial_fail_and_the_same_command_continues_it(tmp_path, tiny_root):
    import signal

    study = tmp_path / "study"
    args = [sys.executable, "-m", "fmnist.tune", *tiny(tiny_root, "trainer.max_epochs=200"), f"tune.dir={study}"]
    process = subprocess.Popen(
        [*args, "tune.n_trials=3"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not list(study.glob("trial_0000/checkpoints/*.ckpt")):  # in its first trial's training
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0 and "Traceback" not in stderr, stderr[-2000:]
    assert_one_error_line(subprocess.CompletedProcess(args, process.returncode, "", stderr), "interrupted", "1 trials")
    (trial,) = optuna.load_study(study_name="fmnist_rnn", storage=f"sqlite:///{study / 'optuna.db'}").get_trials()
    assert trial.state.name == "FAIL" and trial.user_attrs["error"] == "interrupted (Ctrl-C or SIGTERM)"
    again = run_cli("fmnist.tune", *tiny(tiny_root, "trainer.max_epochs=1"), f"tune.dir={study}", "tune.n_trials=1",
                    cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0 and "(1 trials so far)" in again.stdout, again.stderr[-2000:]


@contextlib.contextmanager
def postgresql_server():
    """A throw-away PostgreSQL in a temporary folder on a free loopback port (as `nobody` when run as root,
    which the server refuses); yields its SQLAlchemy URL; stopped and removed whatever happens."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("needs PostgreSQL's server: apt-get install postgresql (.ci/run installs it)")
    bin_dir = Path(found[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="fmnist-pg-"))
    data, port = folder / "data", free_port()
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(folder, "nobody")
    try:
        subprocess.run([*as_user, bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust"], check=True,
                       capture_output=True)  # fmt: skip
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
        subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-o", options, "-l", folder / "log", "-w", "start"],
                       check=True, capture_output=True)  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                           capture_output=True)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql(tmp_path, tiny_root):
    study = tmp_path / "study"
    with postgresql_server() as url:
        args = [
            sys.executable, "-m", "fmnist.tune", *tiny(tiny_root, "trainer.max_epochs=2", "torch_threads=1"),
            f"tune.dir={study}", f"tune.storage={url}", "tune.n_trials=3", "tune.test_best=false",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        workers = [
            subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)
        ]
        started = time.monotonic()
        outputs = [w.communicate(timeout=900) for w in workers]
        for worker, (_, stderr) in zip(workers, outputs, strict=True):
            assert worker.returncode == 0, stderr[-3000:]
        trials = optuna.load_study(study_name="fmnist_rnn", storage=url.replace("://", "+psycopg://", 1)).get_trials()
    assert sorted(t.number for t in trials) == list(range(6)), [t.number for t in trials]  # none twice, none lost
    assert all(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in trials)
    for t in trials:
        assert (Path(t.user_attrs["run_dir"]) / "metrics.json").is_file(), t
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value)
    assert best.value == json.loads((Path(best.user_attrs["run_dir"]) / "metrics.json").read_text())["val/acc_best"]
    assert all("study fmnist_rnn" in out for out, _ in outputs) and time.monotonic() - started < 900
