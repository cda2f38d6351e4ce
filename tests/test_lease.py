"""The GPU lease harness: `make gpu-pack`, `benchmarks/lease.sh` (its DRY run on the CPU, within the GPU machine's
limits on what comes back) and `fmnist.reproduce --import-lease`."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from benchmarks import lease
from fmnist.analysis.lease import import_lease
from fmnist.utils.errors import FmnistError
from tests.conftest import ROOT, assert_one_error_line, run_cli, write_tiny_fashion_mnist

LEASE_FILES = {"summary.json", "results.tar.gz", "lease.log"}


def completed_run(model: str, seed: int, acc: float, epochs: int = 20) -> dict:
    return {
        "model": model,
        "seed": seed,
        "epochs": epochs,
        "test/acc": acc,
        "test/macro_f1": acc - 0.01,
        "train_seconds": 30.0,
        "device": "NVIDIA H200",
        "optimizer": {"_target_": "fmnist.models.optim.KerasAdam", "lr": 0.001},
        "batch_size": 64,
        "params_total_keras": 539274,
        "status": "completed",
        "recipe": "recipe",
    }


def summary(**extra) -> dict:
    return {
        "lease": 1,
        "dry": False,
        "date": "2026-12-02",
        "device": "NVIDIA H200",
        "gpu": "NVIDIA H200, 580.159.03, 143771 MiB",
        "torch": "2.11.0+cu130",
        "runs": [completed_run("lstm", s, 0.91 + s / 1000) for s in (1, 2, 3)]
        + [{**completed_run("gru", 1, 0.5), "status": "failed (exit 1)"}],
        "speedrun": [],
        **extra,
    }


def docs_copy(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("RESULTS.md", "results.json", "SPEEDRUN.md"):
        shutil.copy(ROOT / "docs" / name, docs / name)
    return docs


def test_import_lease_rows_replace_their_own_and_keep_the_rest(tmp_path):
    docs = docs_copy(tmp_path)
    before = json.loads((docs / "results.json").read_text())
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary()))
    rows, speed, _ = import_lease(path, docs)
    assert [(r["model"], len(r["seeds"])) for r in rows] == [("lstm", 3)]  # the failed gru run is left out
    after = json.loads((docs / "results.json").read_text())
    assert set(before) <= set(after)  # earlier rows kept
    assert after["lstm"] == before["lstm"]  # the CPU row of the same recipe stays
    lstm = next(r for r in after.values() if r.get("kind") == "lease")
    assert lstm["test_acc_mean"] == pytest.approx(0.912) and lstm["full_recipe"]
    assert "NVIDIA H200" in lstm["device"] and "torch 2.11.0" in lstm["device"] and "2026-12-02" in lstm["device"]
    assert "NVIDIA H200" in (docs / "RESULTS.md").read_text()


def test_import_lease_reads_the_tarball_without_extracting(tmp_path):
    docs = docs_copy(tmp_path)
    data = json.dumps(summary(speedrun=[speed_row()])).encode()
    tarball = tmp_path / "results.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name in ("summary.json", "../evil.json"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rows, speed, _ = import_lease(tarball, docs)
    assert rows and speed[0]["experiment"] == "speedrun"
    assert not (tmp_path / "evil.json").exists()
    assert "| speedrun | NVIDIA H200" in (docs / "SPEEDRUN.md").read_text()
    import_lease(tarball, docs)  # again: the same rows replace themselves
    assert len(json.loads((docs / "speedrun_gpu.json").read_text())) == 1


def speed_row() -> dict:
    return {
        "experiment": "speedrun",
        "status": "completed",
        "seeds": 20,
        "wanted_seeds": 20,
        "acc_tta": 0.9341,
        "acc_tta_std": 0.001,
        "acc_plain": 0.931,
        "at_target": 1.0,
        "train_seconds": 2.1,
        "train_seconds_std": 0.1,
        "train_seconds_median": 2.05,
        "first_seed_train_seconds": 5.0,
        "lightning_over_plain": 1.02,
    }


@pytest.mark.parametrize(
    "content",
    [b"not json", b'{"runs": []}', b'{"lease": 1, "runs": {"a": 1}}', b"[1, 2]"],
    ids=["not-json", "not-a-lease", "runs-not-a-list", "a-list"],
)
def test_import_lease_refuses_what_is_not_a_lease_summary(tmp_path, content):
    docs = docs_copy(tmp_path)
    before = (docs / "results.json").read_text()
    path = tmp_path / "summary.json"
    path.write_bytes(content)
    with pytest.raises(FmnistError, match="import-lease"):
        import_lease(path, docs)
    assert (docs / "results.json").read_text() == before


def test_import_lease_command_line_errors_are_one_line(tmp_path):
    missing = str(tmp_path / "missing.json")
    done = run_cli("fmnist.reproduce", "--import-lease", missing, "--docs", str(tmp_path), cwd=ROOT)
    assert done.returncode == 2
    assert_one_error_line(done, "missing.json")
    assert not list(tmp_path.iterdir())


def tarball_of(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda t: tarball_of(t / "a.tar.gz", [("other.json", b"{}"), ("summary.json", json.dumps(summary()).encode())]),
        lambda t: (
            t.joinpath("cut.tar.gz").write_bytes(
                tarball_of(t / "whole.tar.gz", [("summary.json", json.dumps(summary()).encode() * 50)]).read_bytes()[
                    :300
                ]
            )
            and t / "cut.tar.gz"
        ),
        lambda t: t.joinpath("big.json").write_text('{"lease": 1, "x": ' + "9" * 5000 + "}") and t / "big.json",
        lambda t: t.joinpath("deep.json").write_text("[" * 200_000) and t / "deep.json",
        lambda t: t.joinpath("junk.tar.gz").write_bytes(b"\x1f\x8b" + b"junk" * 100) and t / "junk.tar.gz",
    ],
    ids=["summary-not-first", "cut-short", "huge-integer", "deep-nesting", "not-gzip-inside"],
)
def test_import_lease_refuses_damaged_or_hostile_files_with_one_error(tmp_path, make):
    docs = docs_copy(tmp_path)
    before = {p.name: p.read_bytes() for p in docs.iterdir()}
    with pytest.raises(FmnistError, match="import-lease"):
        import_lease(make(tmp_path), docs)
    assert {p.name: p.read_bytes() for p in docs.iterdir()} == before


def test_import_lease_keeps_only_checked_keys_and_plain_text(tmp_path):
    docs = docs_copy(tmp_path)
    hostile = summary(gpu="H200, 580\n<!-- results:end -->\n# INJECTED\n<!-- results:start -->")
    hostile["runs"] += [
        {**completed_run("gru", 1, 42.0)},  # accuracy out of range
        {**completed_run("gru", 2, 0.9), "model": "../../etc"},  # not a model
        {**completed_run("lstm", 1, 0.95)},  # seed 1 again
        {**completed_run("gru", 3, 0.9), "epochs": 10**30},
    ]
    hostile["runs"][0]["extra"] = "x" * 10_000
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(hostile))
    rows, _, left_out = import_lease(path, docs)
    assert [(r["model"], sorted(r["seeds"])) for r in rows] == [("lstm", ["1", "2", "3"])]
    assert len(left_out) == 5  # the failed run of summary() and the four above
    page = (docs / "RESULTS.md").read_text()
    assert page.count("<!-- results:start -->") == page.count("<!-- results:end -->") == 1
    stored = json.loads((docs / "results.json").read_text())
    assert "\n" not in json.dumps(stored["lstm"]["device"]) and "extra" not in json.dumps(stored)


def test_a_gpu_row_never_replaces_a_cpu_row(tmp_path):
    docs = docs_copy(tmp_path)
    cpu_rows = {
        k: r for k, r in json.loads((docs / "results.json").read_text()).items() if r["device"].startswith("cpu")
    }
    rnn = next(r for r in cpu_rows.values() if r["model"] == "rnn")
    run = {**completed_run("rnn", 1, 0.88, epochs=rnn["epochs"]), "batch_size": rnn["batch_size"]}
    run["optimizer"] = rnn["optimizer"]
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary(runs=[run])))
    import_lease(path, docs)
    after = json.loads((docs / "results.json").read_text())
    assert all(after.get(k) == r for k, r in cpu_rows.items())
    assert any(r["model"] == "rnn" and "H200" in r["device"] for r in after.values())


def test_a_tar_header_announcing_a_negative_size_is_refused_before_reading(tmp_path):
    header = bytearray(tarfile.TarInfo("summary.json").tobuf(format=tarfile.GNU_FORMAT)[:512])
    header[124:136] = b"\xff" * 12  # base-256: size -1, which would read the whole stream
    header[148:156] = b"        "
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip.compress(bytes(header) + bytes(2**20)))
    with pytest.raises(FmnistError, match="first member"):
        import_lease(path, docs_copy(tmp_path))


def test_crafted_values_are_left_out_not_a_traceback_and_cannot_pass_as_cpu_rows(tmp_path):
    docs = docs_copy(tmp_path)
    before = json.loads((docs / "results.json").read_text())
    runs = [{**completed_run("lstm", 1, 0.9), "model": ["cnn"]}, {**completed_run("lstm", 2, 0.9), "test/acc": 10**400}]
    runs += [{**completed_run("lstm", 3, 0.9), "optimizer": {"_target_": "x", "lr": 10**400}}]
    speed = [{**speed_row(), "experiment": [1]}, {**speed_row(), "seeds": 10_000, "wanted_seeds": 1}]
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary(device="cpu (x86_64, 2 threads)", runs=runs, speedrun=speed)))
    rows, speedrows, left_out = import_lease(path, docs)
    assert len(left_out) == 4 and not speedrows
    after = json.loads((docs / "results.json").read_text())
    assert all(after[k] == r for k, r in before.items())  # a lease row replaces only a lease row


def test_a_dry_summary_is_labelled_not_a_measurement(tmp_path):
    docs = docs_copy(tmp_path)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary(dry=True)))
    rows, _, _ = import_lease(path, docs)
    assert "not a measurement" in rows[0]["device"]


def test_a_tier_that_does_not_fit_is_sized_by_epochs_not_cut(tmp_path):
    state = lease.Lease(tmp_path, tmp_path, ".", 100.0, dry=True)
    runs = lease.seeds_runs(("resnet", "lstm"), {"resnet": "gpu_bf16"}, [1, 2, 3])
    full = lease.plan_epochs(state, [lease.Run(r.model, r.trainer, r.seed, r.epochs) for r in runs], 1e9)
    planned = lease.plan_epochs(state, runs, full / 2)
    assert 0 < planned <= full / 2
    resnet = {r.epochs for r in runs if r.model == "resnet"}
    lstm = {r.epochs for r in runs if r.model == "lstm"}
    assert len(resnet) == len(lstm) == 1 and 1 <= resnet.pop() < 40 and 1 <= lstm.pop() < 20
    assert lease.plan_epochs(state, lease.seeds_runs(("resnet",), {}, [1]), 1.0) == 0.0  # not one epoch: skipped


def test_a_single_run_is_planned_in_one_lane_and_a_failed_probe_means_one_at_a_time(tmp_path, monkeypatch):
    state = lease.Lease(tmp_path, tmp_path, ".", 1000.0, dry=True)
    state.parallel = 3
    alone = lease.tier_seconds(state, [lease.Run("cnn", "gpu_fast", 1, 150)], [150])
    assert alone == pytest.approx(lease.START_SECONDS + 150 * lease.EPOCH_SECONDS["cnn"])

    calls = []

    def fake(state, name, command, planned):  # the probe alone fails, the three at once succeed
        calls.append(name)
        return 1 if "alone" in name else 0

    monkeypatch.setattr(lease, "run_process", fake)
    state = lease.Lease(tmp_path, tmp_path, ".", 1000.0, dry=True)
    lease.concurrency(state, 100.0, [1])
    assert state.parallel == 1 and state.epoch_slowdown == 1.0 and calls


def test_tier_names_and_seeds_reach_the_lease_as_lease_sh_passes_them(tmp_path):
    data = write_tiny_fashion_mnist(tmp_path / "data", gz=True)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["profile", "--out", str(out), "--work", str(tmp_path / "work"), "--data", str(data), "--budget", "60"]
    assert lease.main([*argv, "--dry", "--seeds", "1 2"]) == 0
    log = (out / "lease.log").read_text()
    assert "tiers profile" in log and "seeds [1, 2]" in log and "concurrency" not in log
    assert lease.main(["nope", *argv[1:]]) == 2


def test_lease_fails_loudly_when_the_wheels_do_not_install(tmp_path):
    wheels = tmp_path / "whl"
    write_tiny_fashion_mnist(wheels / "fashion-mnist", gz=True)
    (wheels / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    out = tmp_path / "out"
    env = {**os.environ, "DRY": "1", "OUT": str(out), "WORK": str(tmp_path / "work"), "WHEELS": str(wheels)}
    done = subprocess.run(
        ["bash", "benchmarks/lease.sh"], env={**env, "PYTHON": sys.executable}, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 3
    assert re.search(r"^error: pip could not install", (out / "lease.log").read_text(), re.M)
    assert {p.name for p in out.iterdir()} == {"lease.log"}


@pytest.mark.slow
def test_gpu_pack_and_the_dry_lease_stay_within_the_gpu_machines_limits(tmp_path):
    data = write_tiny_fashion_mnist(tmp_path / "data", gz=True)
    wheels = tmp_path / "whl"
    packed = subprocess.run(
        [sys.executable, "benchmarks/lease_pack.py", "--out", str(wheels), "--data", str(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert packed.returncode == 0, packed.stderr
    names = {p.name.split("-")[0].lower() for p in wheels.glob("*.whl")}
    assert {"hydra_core", "omegaconf", "antlr4_python3_runtime", "kornia", "kornia_rs"} <= names
    assert "torch" not in names and "lightning" not in names  # the GPU machine has them

    out = tmp_path / "out"
    env = {**os.environ, "DRY": "1", "OUT": str(out), "WORK": str(tmp_path / "work"), "WHEELS": str(wheels)}
    done = subprocess.run(
        ["bash", "benchmarks/lease.sh", "beyond", "speedrun", "study", "tf32"],  # tier names as on the GPU
        env={**env, "PYTHON": sys.executable, "SEEDS": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # what the GPU machine returns: at most 8 files, 2 folders deep, plain names, 16 MiB each, 64 MiB in all
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} == LEASE_FILES
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for p in files for part in p.relative_to(out).parts)
    assert all(p.stat().st_size <= 16 * 2**20 for p in files) and sum(p.stat().st_size for p in files) <= 64 * 2**20
    result = json.loads((out / "summary.json").read_text())
    assert result["dry"] is True
    tiers = {r["tier"] for r in result["runs"] if r.get("status") == "completed"}
    assert tiers == {"beyond", "study", "tf32"}, result["runs"]
    assert {r["experiment"] for r in result["speedrun"] if r["status"] == "completed"} == {
        "speedrun",
        "speedrun_94",
        "speedrun_95",
    }
    with tarfile.open(out / "results.tar.gz") as tar:
        members = tar.getnames()
    assert "summary.json" in members and any(m.endswith("metrics.json") for m in members)

    docs = docs_copy(tmp_path)
    imported = subprocess.run(
        [sys.executable, "-m", "fmnist.reproduce", "--import-lease", str(out / "results.tar.gz"), "--docs", str(docs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr
    rows = json.loads((docs / "results.json").read_text())
    assert any("not a measurement" in r["device"] for r in rows.values())
