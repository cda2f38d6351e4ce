"""Issue 12, section 3: comparison of runs in every state, sweeps that end with their summary whatever
happened to the jobs, and the DDP training order."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from fmnist.analysis.compare import compare
from fmnist.analysis.runs import aggregate, find_runs
from fmnist.compare import main as compare_main
from fmnist.data.datamodule import EpochShuffle
from fmnist.training.sweeps import job_rows
from fmnist.utils.errors import FmnistError
from tests.conftest import N_TRAIN, ROOT, completed_metrics, compose_train, run_cli

TINY = ["data.search_dirs=[]", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "torch_threads=1"]
N_TRAIN_SPLIT = N_TRAIN - N_TRAIN // 10


class Once(L.Callback):
    """Test helper for sweeps (run in the job's process): the first job that reaches training step 1
    raises FmnistError (`action=fail`) or gets SIGTERM (`action=interrupt`); `marker` records that it happened."""

    def __init__(self, action: str, marker: str):
        self.action, self.marker = action, Path(marker)

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == 1 and not self.marker.exists():
            self.marker.touch()
            if self.action == "fail":
                raise FmnistError("this job was made to fail")
            os.kill(os.getpid(), signal.SIGTERM)


class RecordOrder(L.Callback):
    """Test helper for DDP: each rank writes the sampler's type and the order of each epoch, and checks that
    the batches it trained on are those images of the training split, in that order."""

    def __init__(self, path: str):
        self.path, self.orders, self.batches_match = Path(path), {}, True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        loader = trainer.train_dataloader
        self.order = [int(i) for i in loader.sampler]  # set_epoch has been called: the order of this epoch
        self.orders[trainer.current_epoch] = self.order
        self.dataset, self.batch_size = loader.dataset, loader.batch_size

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        index = torch.tensor(self.order[batch_idx * self.batch_size : (batch_idx + 1) * self.batch_size])
        self.batches_match &= torch.equal(batch[1].cpu(), self.dataset.labels[index]) and torch.equal(
            batch[0].cpu(), self.dataset.images[index].float() / 255
        )

    def on_train_end(self, trainer, pl_module) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        record = {
            "sampler": type(trainer.train_dataloader.sampler).__name__,
            "orders": self.orders,
            "batches_match": bool(self.batches_match),
            "world_size": trainer.world_size,
        }
        (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def run_fmnist(*args: str, cwd: Path, timeout: int = 300, process: bool = False) -> subprocess.CompletedProcess:
    """`python -m fmnist.<args>` (in this process as run_cli runs it, or in a fresh one with this repository on
    the path), so that jobs can load the helpers above."""
    if not process:
        return run_cli(*args, cwd=cwd)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


# --- which folders are runs, in which state; compare never crashes -----------------------------------------


@pytest.fixture
def runs_in_every_state(tmp_path, trained_run) -> Path:
    """A folder holding one completed run (with the reports evaluate and cluster write inside it) and runs
    that are untested, diverged, unreadable, failed and interrupted, plus an evaluate report on its own."""
    top = tmp_path / "many"
    ok = top / "ok"
    shutil.copytree(trained_run, ok)
    (ok / ".hydra").mkdir()  # as Hydra leaves them in a run folder (trained_run ran without Hydra's main)
    OmegaConf.save(compose_train(["model=cnn", f"output_dir={ok}"]), ok / ".hydra" / "config.yaml")
    GlobalHydra.instance().clear()
    (ok / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      model: cnn\n")
    metrics = json.loads((ok / "metrics.json").read_text())
    for folder in ("checkpoints/eval", "checkpoints/eval-val"):  # what `fmnist.evaluate` writes beside a checkpoint
        (ok / folder).mkdir(parents=True)
        split = folder.rsplit("-", 1)[-1] if "-" in folder else "test"
        (ok / folder / "metrics.json").write_text(
            json.dumps(
                {
                    "checkpoint": "x.ckpt",
                    "model_class": "CNN",
                    "split": split,
                    f"{split}/acc": 0.5,
                    f"{split}/loss": 1.0,
                }
            )
        )
    (ok / "checkpoints" / "clusters").mkdir()
    (ok / "checkpoints" / "clusters" / "clusters.json").write_text("{}")
    untested = {k: v for k, v in metrics.items() if not k.startswith("test/")}
    diverged = {**untested, "status": "diverged", "diverged_epoch": 1, "diverged_step": 3, "error": "loss is nan"}
    for name, content in (
        ("untested", json.dumps(untested)),
        ("diverged", json.dumps(diverged)),
        ("truncated", json.dumps(metrics)[:120]),
        ("failed", None),
        ("interrupted", None),
    ):
        shutil.copytree(ok / ".hydra", top / name / ".hydra")
        if content is not None:
            (top / name / "metrics.json").write_text(content)
    (top / "failed" / "job_status.json").write_text(
        json.dumps(
            {"job": 4, "status": "FAILED", "overrides": ["data.batch_size=0"], "error": "FmnistError: bad batch size"}
        )
    )
    (top / "interrupted" / "checkpoints").mkdir()
    shutil.copy(ok / "checkpoints" / "last.ckpt", top / "interrupted" / "checkpoints" / "last.ckpt")
    (top / "copied_without_hydra").mkdir()
    shutil.copy(ok / "metrics.json", top / "copied_without_hydra" / "metrics.json")
    (top / "lone_eval").mkdir()
    shutil.copy(ok / "checkpoints" / "eval" / "metrics.json", top / "lone_eval" / "metrics.json")
    return top


def test_only_training_runs_are_runs_and_each_has_its_state(runs_in_every_state):
    runs = find_runs([runs_in_every_state])
    states = {Path(r["run_dir"]).name: r["state"] for r in runs}
    assert states == {
        "ok": "completed",
        "copied_without_hydra": "completed",
        "untested": "untested",
        "diverged": "diverged",
        "truncated": "unreadable",
        "failed": "failed",
        "interrupted": "interrupted",
    }
    notes = {Path(r["run_dir"]).name: r["note"] for r in runs}
    assert notes["failed"] == "FmnistError: bad batch size"
    assert "resume=" in notes["interrupted"] and "epoch 1, step 3" in notes["diverged"]
    (row,) = aggregate(runs)  # the two completed copies of the same run; the others are left out
    assert row["model"] == "cnn" and len(row["run_dirs"]) == 2


def test_compare_lists_runs_that_did_not_complete_instead_of_crashing(runs_in_every_state, tmp_path):
    out = compare([str(runs_in_every_state)], str(tmp_path / "out"))
    text = (out / "comparison.md").read_text()
    assert "2 completed runs of 7" in text and "| study: cnn |" in text
    for name, state in (
        ("untested", "untested"),
        ("diverged", "diverged"),
        ("truncated", "unreadable"),
        ("failed", "failed"),
        ("interrupted", "interrupted"),
    ):
        assert f"| {name} | cnn | 42 | {state} |" in text
    assert "Runs not in the comparison" in (out / "comparison.html").read_text()
    assert (out / "per_class_f1.png").is_file() and (out / "acc_vs_time.png").is_file()


def test_compare_with_no_completed_run_writes_the_states_without_figures(runs_in_every_state, tmp_path):
    shutil.rmtree(runs_in_every_state / "ok")
    shutil.rmtree(runs_in_every_state / "copied_without_hydra")
    out = compare([str(runs_in_every_state)], str(tmp_path / "out"))
    text = (out / "comparison.md").read_text()
    assert "No run completed its training and test." in text and "| failed | cnn |" in text
    assert not (out / "per_class_f1.png").exists()


def test_compare_of_a_folder_without_training_runs_is_one_line(runs_in_every_state, capsys):
    assert compare_main([str(runs_in_every_state / "lone_eval")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no runs of fmnist.train in ")
    assert compare_main([str(runs_in_every_state / "ok" / "metrics.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "is not a folder" in err


def test_sweep_summary_survives_damaged_files(tmp_path):
    job = tmp_path / "0"
    job.mkdir()
    (job / "job_status.json").write_text(json.dumps({"job": 0, "status": "COMPLETED", "overrides": ["seed=1"]}))
    (job / "metrics.json").write_text('{"test/acc": 0.9')  # truncated
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "job_status.json").write_text("")
    rows = job_rows(tmp_path, plan=[["seed=1"], ["seed=2"], ["seed=3"]])
    assert [(r["job"], r["status"]) for r in rows] == [(0, "COMPLETED"), (1, "UNKNOWN"), (2, "NOT_RUN")]


# --- sweeps end with their summary and comparison, and one line -------------------------------------------


@pytest.mark.slow
def test_experiment_compare_with_a_failing_job_writes_the_comparison_and_one_line(tmp_path, tiny_root):
    result = run_fmnist(
        "fmnist.train",
        "experiment=compare",
        "seed=1",
        "hydra.sweeper.params.model=rnn",
        "data.batch_size=50,0",
        "hydra.sweep.dir=sweep",
        f"data.root={tiny_root}",
        *TINY,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert last_line(result.stderr) == "error: 1 of 2 jobs failed: see sweep/sweep_summary.md"
    assert "Traceback" not in result.stderr + result.stdout
    summary = (tmp_path / "sweep" / "sweep_summary.md").read_text()
    assert "1 completed, 1 failed" in summary and "data.batch_size=0 is out of range" in summary
    comparison = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "1 completed runs of 2" in comparison
    assert "| 1 | rnn | 1 | failed | FmnistError: data.batch_size=0" in comparison


@pytest.mark.slow
def test_interrupted_sweep_lists_the_interrupted_and_never_run_jobs(tmp_path, tiny_root):
    result = run_fmnist(
        "fmnist.train",
        "-m",
        "model=rnn",
        "seed=1,2,3",
        "hydra.sweep.dir=sweep",
        "+callbacks.once._target_=tests.test_hardening_sweeps.Once",
        "+callbacks.once.action=interrupt",
        f"+callbacks.once.marker={tmp_path / 'marker'}",
        f"data.root={tiny_root}",
        *TINY,
        cwd=tmp_path,
        process=True,  # the callback sends SIGTERM to its own process
    )
    assert result.returncode == 1
    assert last_line(result.stderr) == (
        "error: the sweep was interrupted: 0 of 3 jobs completed, 0 failed, "
        "1 interrupted, 2 not run: see sweep/sweep_summary.md"
    )
    summary = (tmp_path / "sweep" / "sweep_summary.md").read_text()
    assert "0 completed, 0 failed, 1 interrupted, 2 not run" in summary
    assert "resume=" in summary and summary.count("never started") == 2 and "seed=3" in summary
    assert (tmp_path / "sweep" / "0" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "sweep" / "1").exists()


@pytest.mark.slow
def test_a_failed_trial_is_marked_fail_and_the_search_goes_on(tmp_path, tiny_root):
    result = run_fmnist(
        "fmnist.tune",
        "model=rnn",
        "tune.n_trials=2",
        "tune.test_best=false",
        "+callbacks.once._target_=tests.test_hardening_sweeps.Once",
        "+callbacks.once.action=fail",
        f"+callbacks.once.marker={tmp_path / 'marker'}",
        f"data.root={tiny_root}",
        *TINY,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trial 0 failed: this job was made to fail" in result.stdout and "trial 1: COMPLETE" in result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    with sqlite3.connect(tmp_path / "outputs" / "tune" / "rnn" / "optuna.db") as db:
        states = [row[0] for row in db.execute("select state from trials order by number")]
    assert states == ["FAIL", "COMPLETE"]
    summary = (tmp_path / "outputs" / "tune" / "rnn" / "study_summary.md").read_text()
    assert "this job was made to fail" in summary and "1 COMPLETE, 1 FAIL" in summary


# --- DDP: the sampler shards by rank itself, with a new order each epoch -----------------------------------


def test_epoch_shuffle_keeps_its_order_on_one_process_and_shards_evenly():
    def rule(n, seed, epoch):  # the (seed, epoch) -> order rule that resumed runs rely on
        return torch.randperm(n, generator=torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)).tolist()

    sampler = EpochShuffle(range(360), seed=42)
    sampler.set_epoch(3)
    assert list(sampler) == rule(360, 42, 3) and len(sampler) == 360
    shards = [EpochShuffle(range(7), seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    assert [len(s) for s in shards] == [4, 4] and set(list(shards[0]) + list(shards[1])) == set(range(7))


@pytest.mark.slow
def test_ddp_ranks_see_disjoint_shards_in_a_new_order_each_epoch(tmp_path, tiny_root):
    result = run_fmnist(
        "fmnist.train",
        "trainer=ddp_cpu",
        "model=cnn",
        "hydra.run.dir=ddp",
        "data.batch_size=50",
        "trainer.max_epochs=2",
        "test=false",
        "data.search_dirs=[]",
        "torch_threads=1",
        "trainer.enable_progress_bar=false",
        f"data.root={tiny_root}",
        "+callbacks.record._target_=tests.test_hardening_sweeps.RecordOrder",
        f"+callbacks.record.path={tmp_path / 'orders'}",
        cwd=tmp_path,
        process=True,  # Lightning starts the second rank by running the command line again
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "orders" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["batches_match"] for r in ranks)
    assert [r["sampler"] for r in ranks] == ["EpochShuffle"] * 2  # not wrapped by Lightning
    for epoch in ("0", "1"):
        shard0, shard1 = (r["orders"][epoch] for r in ranks)
        assert len(shard0) == len(shard1) == N_TRAIN_SPLIT // 2
        assert not set(shard0) & set(shard1) and set(shard0) | set(shard1) == set(range(N_TRAIN_SPLIT))
    for rank in ranks:
        assert rank["orders"]["0"] != rank["orders"]["1"]


# ---- outside review: edited metrics.json values, replaced comparisons, raw HTML in names -------------------


@pytest.mark.slow  # draws the comparison figures for each case
@pytest.mark.parametrize(
    "changes, note",
    [
        ({"model": "$\\frac$"}, None),  # a valid name: drawn as text, not read as mathtext
        ({"optimizer": "adam"}, 'metrics.json has optimizer="adam" (must be a mapping): edited or damaged'),
        ({"epochs": [1]}, "metrics.json has epochs=[1] (must be an integer): edited or damaged"),
        ({"seed": "1"}, 'metrics.json has seed="1" (must be an integer or null): edited or damaged'),
        ({"model": ["cnn"]}, 'metrics.json has model=["cnn"] (must be a string): edited or damaged'),
        ({"test/macro_f1": "0.8"}, 'metrics.json has test/macro_f1="0.8" (must be a finite number): edited or damaged'),
        (
            {"train_seconds": float("inf")},
            "metrics.json has train_seconds=Infinity (must be a finite number): edited or damaged",
        ),
    ],
)
def test_compare_lists_a_run_with_edited_metrics_values_as_unreadable(tmp_path, changes, note):
    for name, metrics in (("good", completed_metrics()), ("edited", completed_metrics(**changes))):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "metrics.json").write_text(json.dumps(metrics))
    runs = {Path(r["run_dir"]).name: r for r in find_runs([tmp_path / "runs"])}
    assert runs["edited"]["state"] == ("completed" if note is None else "unreadable")
    assert runs["edited"]["note"] == (note or "")
    out = compare([str(tmp_path / "runs")], str(tmp_path / "out"))
    assert (out / "per_class_f1.png").is_file() and (out / "acc_vs_time.png").is_file()
    if note is not None:
        assert f"| edited | ? | ? | unreadable | {note} |" in (out / "comparison.md").read_text()


def test_reproduce_collect_shows_a_missing_parameter_count_as_a_question_mark(tmp_path, capsys):
    from fmnist.reproduce import main as reproduce_main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(completed_metrics(params_total_keras=None)))
    assert reproduce_main(["--collect", str(tmp_path / "run"), "--docs", str(tmp_path / "docs")]) == 0
    assert "| 0.7900 | ? |" in (tmp_path / "docs" / "RESULTS.md").read_text()


def test_compare_never_replaces_an_earlier_comparison_without_overwrite(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(completed_metrics()))
    out = tmp_path / "out"
    out.mkdir()
    (out / "comparison.md").write_text("kept")
    assert compare_main([str(tmp_path / "run"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: {out / 'comparison.md'} already exists and would be replaced. Fix: "
        "choose another --out DIR, or add --overwrite to replace it\n"
    )
    assert (out / "comparison.md").read_text() == "kept" and sorted(p.name for p in out.iterdir()) == ["comparison.md"]
    assert compare_main([str(tmp_path / "run"), "--out", str(out), "--overwrite"]) == 0
    assert (out / "comparison.md").read_text().startswith("# Model comparison")


def test_comparison_and_sweep_summary_markdown_carry_no_raw_html_from_names(tmp_path):
    from fmnist.training.sweeps import write_summary

    name = "<img src=x onerror=alert(1)> & co"
    (tmp_path / "runs" / "0").mkdir(parents=True)
    (tmp_path / "runs" / "0" / "metrics.json").write_text(json.dumps(completed_metrics(model=name)))
    (tmp_path / "runs" / "0" / "job_status.json").write_text(
        json.dumps({"job": 0, "status": "COMPLETED", "overrides": [f"+name={name}"]})
    )
    out = compare([str(tmp_path / "runs")], str(tmp_path / "out"))
    text = (out / "comparison.md").read_text()
    assert "<img" not in text and "| &lt;img src=x onerror=alert(1)&gt; &amp; co |" in text
    assert "<img src=x" not in (out / "comparison.html").read_text()  # its own <img> tags are the figures
    write_summary(tmp_path / "runs")
    summary = (tmp_path / "runs" / "sweep_summary.md").read_text()
    assert "<img" not in summary and "&lt;img src=x onerror=alert(1)&gt; &amp; co" in summary
