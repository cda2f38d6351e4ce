"""Files that the analysis commands read are not trusted: run folders' metrics.json, docs/results.json, a saved
speedrun tier and TensorBoard event files give one line or a note naming the file, never a traceback, and are
read within a bound."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from fmnist.analysis import reports
from fmnist.reproduce import main as reproduce
from tests.conftest import ROOT, completed_metrics

COMPLETED = completed_metrics()
ROW = {
    "model": "cnn",
    "recipe": "Adam lr=0.001, batch 100",
    "test_acc_mean": 0.9,
    "test_acc_std": 0.0,
    "macro_f1_mean": 0.9,
    "seeds": ["1"],
    "epochs": 3,
    "train_seconds_mean": 10.0,
    "device": "cpu",
    "batch_size": 100,
    "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.001},
    "params_total_keras": 1234,
}


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err[-2000:]
    return [line for line in err.splitlines() if line.startswith("error:")]


def _write_runs(folder: Path, hostile: bytes) -> Path:
    """A sweep folder with a completed run `good` and a run `bad` whose metrics.json is `hostile`."""
    for name, data in (("good", json.dumps(COMPLETED).encode()), ("bad", hostile)):
        (folder / name).mkdir(parents=True)
        (folder / name / "metrics.json").write_bytes(data)
    return folder / "bad" / "metrics.json"


@pytest.mark.parametrize(
    "hostile",
    [
        b"[" * 100_000 + b"]" * 100_000,  # nested past the parser's recursion limit
        b'{"model": "cnn", "epochs": ' + b"1" * 5000 + b"}",  # an integer Python refuses to convert
        json.dumps(COMPLETED | {"test/acc": float("nan")}).encode(),
        json.dumps(COMPLETED | {"test/acc": "0.9"}).encode(),
        json.dumps(COMPLETED | {"train_seconds": "3"}).encode(),
        json.dumps(COMPLETED | {"epochs": "1"}).encode(),
        json.dumps(COMPLETED | {"model": ["cnn"]}).encode(),
        json.dumps(COMPLETED | {"seed": "x", "optimizer": {"lr": "\n" * 5000}}).encode(),
        b'{"model": "cnn", "epochs": 1, "test/acc": 0.\xff}',
        None,  # over the size cap
    ],
    ids=["deep", "long-int", "nan", "str-acc", "str-seconds", "str-epochs", "list-model", "bad-seed", "utf8", "huge"],
)
def test_collect_names_a_damaged_metrics_json_in_one_line_and_tabulates_the_rest(tmp_path, capsys, hostile):
    bad = _write_runs(tmp_path / "sweep", hostile or b"")
    if hostile is None:
        with open(bad, "r+b") as file:
            file.truncate(64 << 20)  # sparse, over any cap: nothing is written to the disk
    status = reproduce(["--collect", str(tmp_path / "sweep"), "--docs", str(tmp_path / "docs")])
    out, err = capsys.readouterr()
    assert status == 0 and not _error_lines(err)
    notes = [line for line in out.splitlines() if str(bad.parent) in line]
    assert len(notes) == 1 and notes[0].startswith("left out:") and len(notes[0]) < 400, out[-2000:]
    (row,) = json.loads((tmp_path / "docs" / "results.json").read_text()).values()
    assert row["seeds"] == ["1"] and row["test_acc_mean"] == 0.8


def test_collect_does_not_block_on_a_fifo_named_metrics_json(tmp_path):
    bad = _write_runs(tmp_path / "sweep", b"")
    bad.unlink()
    os.mkfifo(bad)
    done = subprocess.run(
        [sys.executable, "-m", "fmnist.reproduce", "--collect", str(tmp_path / "sweep"), "--docs", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and not _error_lines(done.stderr)
    assert any(line.startswith("left out:") and str(bad.parent) in line for line in done.stdout.splitlines())


def test_text_of_a_run_cannot_add_rows_to_the_markdown_table(tmp_path, capsys):
    metrics = COMPLETED | {"model": "cnn\n| forged | row |", "optimizer": {"_target_": "a|b", "lr": "1\n|x"}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    assert reproduce(["--collect", str(tmp_path / "run"), "--docs", str(tmp_path / "docs")]) == 0
    capsys.readouterr()
    text = (tmp_path / "docs" / "RESULTS.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 3  # the header, its rule and the one row
    assert all(line.replace("\\|", "").count("|") == 11 for line in table), table


@pytest.mark.parametrize(
    "rows",
    [
        {"cnn": ROW | {"epochs": "3"}},
        {"cnn": ROW | {"test_acc_mean": "0.9"}},
        {"cnn": ROW | {"test_acc_mean": float("nan")}},
        {"cnn": ROW | {"train_seconds_mean": "10 s"}},
        {"cnn": ROW | {"model": ["cnn"]}},
        {"cnn": ROW | {"seeds": 3}},
        {"cnn": ROW | {"kind": ["gpu"]}},
        {"cnn": {k: v for k, v in ROW.items() if k != "device"}},
        {"cnn": "a row"},
        "deep",
        "long-int",
        "huge",
    ],
)
def test_a_damaged_results_json_is_one_error_line_and_nothing_is_written(tmp_path, capsys, rows):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(COMPLETED))
    docs = tmp_path / "docs"
    docs.mkdir()
    results = docs / "results.json"
    if rows == "deep":
        results.write_text('{"cnn": ' + "[" * 100_000)
    elif rows == "long-int":
        results.write_text('{"cnn": ' + "7" * 5000 + "}")
    elif rows == "huge":
        with open(results, "wb") as file:
            file.truncate(64 << 20)  # sparse
    else:
        results.write_text(json.dumps(rows))
    before = results.read_bytes()
    status = reproduce(["--collect", str(run), "--docs", str(docs)])
    out, err = capsys.readouterr()
    (line,) = _error_lines(err)
    assert status == 2 and str(results) in line and len(line) < 500
    assert results.read_bytes() == before and not (docs / "RESULTS.md").exists()


# TensorBoard event files: TFRecords of uint64 length, uint32 masked crc of the length, data, uint32 crc of the data.


def _record(data: bytes, length: int | None = None, data_crc: int | None = None) -> bytes:
    header = struct.pack("<Q", len(data) if length is None else length)
    crc = masked_crc32c(data) if data_crc is None else data_crc
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", crc)


def _scalar(tag: str, value: float, step: int) -> bytes:
    summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
    return Event(step=step, wall_time=1.0, summary=summary).SerializeToString()


def _events(folder: Path, name: str, *records: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"events.out.tfevents.{name}"
    version = _record(Event(wall_time=1.0, file_version="brain.Event:2").SerializeToString())
    path.write_bytes(version + b"".join(records))
    return path


MEMORY_BOUND = """
import json, resource, sys
from fmnist.analysis import reports
from tensorboard.backend.event_processing import event_accumulator  # noqa: F401 - as the reader imports them
from tensorboard.compat.proto import event_pb2  # noqa: F401
vm = next(int(line.split()[1]) << 10 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (768 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
print(json.dumps(reports.read_curves(sys.argv[1])))
"""


def test_an_event_record_announcing_a_terabyte_is_not_read_and_the_other_curves_are(tmp_path):
    folder = tmp_path / "tensorboard"
    huge = _events(folder, "1", _record(_scalar("train/acc", 0.5, 0)), _record(b"x" * 16, length=1 << 40))
    _events(folder, "2", _record(_scalar("train/acc", 0.75, 1)), _record(_scalar("val/acc", 0.25, 1)))
    os.mkfifo(folder / "events.out.tfevents.3")  # not blocked on
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_BOUND, str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert json.loads(lines[-1]) == {"train/acc": [0.5, 0.75], "val/acc": [0.25]}
    assert any(str(huge) in line for line in lines[:-1]), done.stdout
    assert any("events.out.tfevents.3" in line for line in lines[:-1]), done.stdout


def test_damaged_event_files_are_noted_and_the_report_is_still_written(tmp_path, caplog, capsys):
    folder = tmp_path / "tensorboard"
    good = _record(_scalar("val/loss", 2.0, 0))
    damaged = [
        _events(folder, "1", _record(_scalar("train/acc", 0.5, 0)), _record(b"x" * 16, length=100)),  # past the end
        _events(folder, "2", good[:5]),  # cut in a header
        _events(folder, "3", good[:-2]),  # cut in a record
        _events(folder, "4", good[:8] + b"\0\0\0\0" + good[12:]),  # the length's crc is wrong
        _events(folder, "5", _record(_scalar("val/loss", 9.0, 0), data_crc=7)),  # the data's crc is wrong
        _events(folder, "6", _record(b"\xff" * 40)),  # not an event
    ]
    _events(folder, "7", good, _record(_scalar("train/loss", 1.0, 0)))
    (folder / "events.out.tfevents.8").symlink_to("/dev/zero")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    loader = [(torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8), torch.arange(20) % 10)]
    caplog.set_level(logging.INFO)
    reports.write_reports(model, loader, [f"c{i}" for i in range(10)], tmp_path / "out", tensorboard_dir=folder)
    said = caplog.text + capsys.readouterr().out
    for path in [*damaged, folder / "events.out.tfevents.8"]:
        assert str(path) in said, said
    assert reports.read_curves(folder) == {"train/acc": [0.5], "val/loss": [2.0], "train/loss": [1.0]}
    for name in ("classification_report.json", "confusion_matrix.png", "curves.png"):
        assert (tmp_path / "out" / name).is_file()


def test_curves_read_as_tensorboard_reads_them_stepping_over_long_records(tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    for run in range(2):
        with SummaryWriter(str(tmp_path), filename_suffix=f".{run}") as writer:
            for step in range(4):
                writer.add_scalar("train/acc", 0.1 * step + run, step)
                writer.add_scalar("val/loss", 1 / (step + 1), step)
                writer.add_scalar("lr", 0.01, step)
                writer.add_image("picture", torch.rand(3, 32, 32), step)
    monkeypatch.setattr(reports, "RECORD_READ_MAX", 1000, raising=False)  # the images' records are stepped over
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    accumulator.Reload()
    expected = {tag: [e.value for e in accumulator.Scalars(tag)] for tag in ("train/acc", "val/loss")}
    assert reports.read_curves(tmp_path) == expected and len(expected["train/acc"]) == 8


# benchmarks/speedrun.py


def _speedrun(argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    from benchmarks import speedrun

    monkeypatch.setattr(sys, "argv", ["speedrun.py", *argv])
    with pytest.raises(SystemExit) as stopped:
        speedrun.main()
    _, err = capsys.readouterr()
    return stopped.value.code, err


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--seeds", "x"], "--seeds"),
        (["--seeds", "0"], "--seeds"),
        (["--seeds", "-3"], "--seeds"),
        (["--first-seed", "-1"], "--first-seed"),
        (["--first-seed", str(2**32)], "--first-seed"),
        (["--nope"], "--nope"),
        (["--json", "{tmp}"], "--json"),
        (["--json", "{tmp}/file/out.json"], "--json"),
        (["--results", "--docs", "{tmp}/docs"], "results.json"),
        (["-r", "tier=null"], "tier"),
        (["--trainer", "no such"], "no such"),
    ],
)
def test_bad_speedrun_options_are_one_error_line_with_status_2(
    tmp_path, capsys, monkeypatch, no_data_access, argv, named
):
    (tmp_path / "file").write_text("")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.json").write_text(json.dumps({"cnn": ROW | {"epochs": "3"}}))
    status, err = _speedrun([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys, monkeypatch)
    (line,) = _error_lines(err)
    assert status == 2 and named in line and len(line) < 600, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "saved",
    [
        "[" * 100_000,
        '{"seeds": ' + "1" * 5000 + "}",
        '{"seeds": [[1]], "acc_tta": 0.9}',
        '{"seeds": {"a": 1}}',
        "\xff",
        "huge",
    ],
    ids=["deep", "long-int", "list-seed", "dict-seeds", "utf8", "huge"],
)
def test_a_damaged_saved_tier_is_one_error_line_with_status_2(tmp_path, capsys, monkeypatch, saved):
    path = tmp_path / "tier.json"
    if saved == "huge":
        with open(path, "wb") as file:
            file.truncate(64 << 20)  # sparse
    else:
        path.write_bytes(saved.encode("latin-1"))
    status, err = _speedrun(["--results-from", str(path), "--docs", str(tmp_path / "docs")], capsys, monkeypatch)
    (line,) = _error_lines(err)
    assert status == 2 and str(path) in line and len(line) < 600 and not (tmp_path / "docs").exists()


@pytest.mark.timeout(30)
def test_a_fifo_given_as_a_saved_tier_is_refused_without_blocking(tmp_path, capsys, monkeypatch):
    os.mkfifo(tmp_path / "tier.json")
    status, err = _speedrun(["--results-from", str(tmp_path / "tier.json")], capsys, monkeypatch)
    (line,) = _error_lines(err)
    assert status == 2 and str(tmp_path / "tier.json") in line
