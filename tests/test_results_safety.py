"""No result is lost or silently overwritten: finished and half-tested runs on resume, one newest last.ckpt,
the run folder's lock, moved and copied folders, atomic checkpoint writes, bad last.ckpt files, and the
resume command printed after an interrupt."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fmnist.analysis.reports import events_dir
from fmnist.models import SimpleRNN
from fmnist.runs.folder import LOCK_FILE, AtomicCheckpointIO, interrupted_message, resume_command, run_folder_lock
from fmnist.runs.resume import cli_args
from fmnist.training.fit import train
from fmnist.utils.errors import FmnistError
from tests.conftest import ROOT, assert_error_names, assert_one_error_line, compose_train, run_cli

STEPS = 3  # training steps per epoch (trainer.limit_train_batches)
FIT_FIGURES = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "epoch_seconds", "epochs", "steps")


class SendSignal(L.Callback):
    """Sends this process `signum` as training step `step` (1-based) begins."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM)):
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step - 1:
            os.kill(os.getpid(), self.signum)


class SigtermInTest(L.Callback):
    """SIGTERM after the first test batch: the run stops while testing, as with `kill` then."""

    def on_test_batch_end(self, *args) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


class WorseEachEpoch(L.Callback):
    """Makes every epoch's val/acc worse than the one before, the first 1.0, so no later epoch is a new best
    (Lightning's own ModelCheckpoint then leaves last.ckpt at the first epoch)."""

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:  # runs before ModelCheckpoint, which Lightning puts last
            trainer.callback_metrics["val/acc"] = torch.tensor(1.0 - 0.1 * trainer.current_epoch)


@pytest.fixture(autouse=True)
def _keep_thread_count():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _overrides(tiny_root: Path, *extra: str) -> list[str]:
    return [
        "model=cnn",
        f"data.root={tiny_root}",
        "data.search_dirs=[]",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=2",
        f"trainer.limit_train_batches={STEPS}",
        "trainer.enable_progress_bar=false",
        "data.batch_size=30",
        "torch_threads=1",
        "logger={}",
        *extra,
    ]


def _train(overrides: list[str]) -> dict:
    try:
        return train(compose_train(overrides))
    finally:
        GlobalHydra.instance().clear()


def _train_in(run: Path, overrides: list[str]) -> dict:
    """`_train` into `run` with the `.hydra/` (config.yaml, overrides.yaml) that `python -m fmnist.train
    hydra.run.dir=RUN` leaves there (without the tests' own callbacks), so that it can be resumed."""
    recorded = [o for o in overrides if not o.startswith("+callbacks.")]
    cfg = compose_train([*recorded, f"output_dir={run}"])
    GlobalHydra.instance().clear()
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(recorded), run / ".hydra" / "overrides.yaml")
    return _train([*overrides, f"output_dir={run}"])


def _callback(name: str, cls: type, **kwargs) -> list[str]:
    return [
        f"+callbacks.{name}._target_={__name__}.{cls.__name__}",
        *(f"+callbacks.{name}.{key}={value}" for key, value in kwargs.items()),
    ]


def _files(run: Path) -> dict[str, tuple[int, int]]:
    """Every file of a run folder (but its lock) with its size and modification time."""
    return {
        str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def _last_checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("last*.ckpt"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_root) -> Path:
    """A finished and tested run folder, as `python -m fmnist.train` leaves it (with its `.hydra/`)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    result = run_cli("fmnist.train", *_overrides(tiny_root), f"hydra.run.dir={run}", cwd=run.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def _copy(finished_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "copied run"
    shutil.copytree(finished_run, run)
    return run


# 1. A finished run, a run stopped while testing, and no key of metrics.json ever lost


@pytest.mark.slow
def test_resuming_a_finished_run_reports_it_and_changes_nothing(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)  # a copied folder: the paths inside are its own
    before, metrics = _files(run), json.loads((run / "metrics.json").read_text())
    log_before = (run / "train.log").read_text()
    result = run_cli("fmnist.train", f"resume={run}", "torch_threads=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1
    assert_error_names(lines[0], f"resume={run}", "finished", "trainer.max_epochs=2")
    log = (run / "train.log").read_text()  # the log only gains what this command printed
    assert log.startswith(log_before) and log.rstrip().endswith(lines[0])
    after = {name: stat for name, stat in _files(run).items() if name != "train.log"}
    assert after == {name: stat for name, stat in before.items() if name != "train.log"}  # nothing rewritten,
    # the torch_threads=1 override not recorded either
    assert _train([f"resume={run}"]) == metrics
    assert list(tmp_path.iterdir()) == [run]  # no new run folder


@pytest.mark.slow
def test_a_resume_that_trains_further_keeps_every_key_of_metrics_json(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    before = json.loads((run / "metrics.json").read_text())
    more = _train([f"resume={run}", "trainer.max_epochs=3", "test=false"])
    assert before.keys() <= more.keys() and more["epochs"] == 3 and len(more["epoch_seconds"]) == 3
    assert {k: more[k] for k in before if k.startswith("test/")} == {
        k: v for k, v in before.items() if k.startswith("test/")
    }
    if more["best_checkpoint"] != before["best_checkpoint"]:  # the carried test results name their weights
        assert more["test_checkpoint"] == before["best_checkpoint"]
    assert json.loads((run / "metrics.json").read_text()) == more


@pytest.mark.slow
@pytest.mark.parametrize("metrics_json", ["kept", "lost"])
def test_a_run_stopped_while_testing_finishes_its_test_with_the_fit_figures(tiny_root, tmp_path, metrics_json):
    run = tmp_path / "run"
    with pytest.raises(SIGTERMException):
        _train_in(run, _overrides(tiny_root, *_callback("stop", SigtermInTest)))
    fitted = json.loads((run / "metrics.json").read_text())  # written when the fit ended, before the test
    assert "test/acc" not in fitted and fitted["steps"] == 2 * STEPS and len(fitted["epoch_seconds"]) == 2
    assert interrupted_message(run).endswith(f"`python -m fmnist.train resume={run}`")
    if metrics_json == "lost":  # e.g. a run of an earlier fmnist, or killed before writing it
        (run / "metrics.json").unlink()
    last = (run / "checkpoints" / "last.ckpt").read_bytes()

    finished = _train([f"resume={run}"])
    assert 0 <= finished["test/acc"] <= 1 and "test/f1/Bag" in finished
    assert {k: finished[k] for k in FIT_FIGURES} == {k: fitted[k] for k in FIT_FIGURES}  # from what the run saved
    assert (
        finished["best_checkpoint"] == fitted["best_checkpoint"] == "checkpoints/epoch_001.ckpt"
        or finished["best_checkpoint"] == fitted["best_checkpoint"] == "checkpoints/epoch_002.ckpt"
    )
    assert fitted.keys() <= finished.keys()
    assert json.loads((run / "metrics.json").read_text()) == finished
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == last  # no training happened
    assert (run / "classification_report.md").is_file()
    assert _train([f"resume={run}"]) == finished  # now finished
    # the test figures sit at the run's last epoch in TensorBoard, though this process never fitted
    events = EventAccumulator(str(events_dir(run / "tensorboard")), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("test/acc")] == [2]


# 2. One last.ckpt, always the newest; 4. paths relative to the run folder


@pytest.mark.slow
def test_an_interrupt_in_the_first_epoch_then_resume_leaves_one_newest_last_ckpt_also_in_a_copy(tiny_root, tmp_path):
    run, copy = tmp_path / "run", tmp_path / "copy"
    with pytest.raises(SIGTERMException):
        _train_in(run, _overrides(tiny_root, "test=false", *_callback("stop", SendSignal, step=2)))
    assert _last_checkpoints(run) == ["last.ckpt"]
    shutil.copytree(run, copy)
    original = _files(run)
    for folder in (run, copy):
        metrics = _train([f"resume={folder}"])
        assert metrics["steps"] == 2 * STEPS
        assert _last_checkpoints(folder) == ["last.ckpt"]  # Lightning would add last-v1.ckpt
        last = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
        assert last["global_step"] == 2 * STEPS  # the newest
        assert last["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 2
        state = next(v for k, v in last["callbacks"].items() if k.startswith("RunCheckpoint"))
        assert state["best_model_path"] in ("epoch_001.ckpt", "epoch_002.ckpt")  # names in the folder, not paths
        assert state["last_model_path"] == "last.ckpt" and state["dirpath"] == "."
        assert metrics["best_checkpoint"] == f"checkpoints/{state['best_model_path']}"
        assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == sorted(
            ["last.ckpt", state["best_model_path"]]
        )
        if folder == run:
            assert _files(copy) == original  # the copy is a run of its own


@pytest.mark.slow
def test_a_moved_run_folder_resumes_and_tests_its_own_best_checkpoint(tiny_root, tmp_path):
    run, moved = tmp_path / "run", tmp_path / "elsewhere" / "moved run"
    with pytest.raises(SIGTERMException):  # in epoch 2: epoch_001.ckpt (the first epoch) is the best so far
        _train_in(
            run,
            _overrides(tiny_root, *_callback("stop", SendSignal, step=STEPS + 2), *_callback("worse", WorseEachEpoch)),
        )
    moved.parent.mkdir()
    run.rename(moved)
    metrics = _train([f"resume={moved}"])
    assert metrics["best_checkpoint"] == "checkpoints/epoch_001.ckpt" and 0 <= metrics["test/acc"] <= 1
    assert metrics["steps"] == 2 * STEPS and not run.exists()
    assert sorted(p.name for p in (moved / "checkpoints").iterdir()) == ["epoch_001.ckpt", "last.ckpt"]
    # Epoch 2 was no new best (its val/acc < 1.0): Lightning would have left last.ckpt at epoch 1.
    assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2 * STEPS


@pytest.mark.slow
def test_absolute_paths_of_a_checkpoint_from_another_folder_are_mapped_into_this_one(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)  # as if written, with absolute paths, in a folder that is gone now
    gone = "/gone/run/checkpoints"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    state = next(v for k, v in last["callbacks"].items() if k.startswith("RunCheckpoint"))
    paths = ("best_model_path", "kth_best_model_path", "last_model_path")
    state.update(
        {key: f"{gone}/{state[key]}" for key in paths},
        dirpath=gone,
        best_k_models={f"{gone}/{name}": score for name, score in state["best_k_models"].items()},
    )
    torch.save(last, run / "checkpoints" / "last.ckpt")
    best = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    metrics = _train([f"resume={run}", "trainer.max_epochs=3"])
    assert metrics["epochs"] == 3 and 0 <= metrics["test/acc"] <= 1 and (run / metrics["best_checkpoint"]).is_file()
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == sorted({"last.ckpt", Path(metrics["best_checkpoint"]).name})  # the replaced best was deleted
    assert metrics["best_checkpoint"] == best or Path(best).name not in kept


@pytest.mark.slow
def test_a_checkpoint_state_naming_a_file_outside_its_folder_is_refused(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    victim = tmp_path / "victim.ckpt"
    victim.write_bytes(b"keep me")
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    key = next(k for k in last["callbacks"] if k.startswith("RunCheckpoint"))
    last["callbacks"][key].update(
        best_model_path=str(victim),
        kth_best_model_path="../../victim.ckpt",
        best_k_models={"../../victim.ckpt": torch.tensor(0.0)},
    )
    torch.save(last, run / "checkpoints" / "last.ckpt")
    with pytest.raises(FmnistError) as info:
        _train([f"resume={run}", "trainer.max_epochs=3"])
    assert_error_names(str(info.value), "victim.ckpt", "refused")
    assert victim.read_bytes() == b"keep me"


# 3. The run folder's lock


@pytest.mark.slow
def test_a_run_folder_in_use_is_refused_naming_the_pid_and_freed_when_its_process_dies(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fmnist.runs.folder import run_folder_lock\n"
            "with run_folder_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)",
            str(run),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert (run / LOCK_FILE).read_text().strip() == str(holder.pid)
        before = _files(run)
        named = (str(run), "in use", f"process {holder.pid}")
        with pytest.raises(FmnistError) as info:
            _train([f"resume={run}", "trainer.max_epochs=3"])
        assert_error_names(str(info.value), *named)
        with pytest.raises(FmnistError) as info:  # a fresh run into that folder too
            _train(["model=cnn", f"output_dir={run}", "trainer.accelerator=cpu"])
        assert_error_names(str(info.value), *named)
        assert _files(run) == before  # the trainer.max_epochs=3 override is not recorded
    finally:
        holder.kill()  # SIGKILL: the process cannot release anything itself
        holder.wait()
    with run_folder_lock(run):  # the OS released it
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())


class TryTheLock(L.Callback):
    """Tries to lock the run folder while the run trains in it; keeps the refusal."""

    refused = ""

    def __init__(self, run: str):
        self.run = run

    def on_train_start(self, trainer, pl_module) -> None:
        try:
            with run_folder_lock(self.run):
                pass
        except FmnistError as error:
            TryTheLock.refused = str(error)


@pytest.mark.slow
def test_training_holds_the_lock_until_it_ends(tiny_root, tmp_path):
    run = tmp_path / "run"
    _train(
        _overrides(
            tiny_root,
            f"output_dir={run}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "test=false",
            *_callback("probe", TryTheLock, run=run),
        )
    )
    assert_error_names(TryTheLock.refused, str(run), "in use", f"process {os.getpid()}")
    with run_folder_lock(run):  # released when training ended
        pass


# 5. Atomic checkpoint writes


def _no_space(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _no_space_for_checkpoints(fsync):
    def full(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and ".ckpt." in os.readlink(f"/proc/self/fd/{fd}"):
            _no_space(fd)
        fsync(fd)

    return full


def test_checkpoints_are_written_beside_the_target_then_renamed(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    renames = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst, **fds: (renames.append((src, dst)), replace(src, dst, **fds)))
    AtomicCheckpointIO().save_checkpoint({"global_step": 7}, target)
    assert [(Path(src).parent, Path(dst)) for src, dst in renames] == [(Path("."), Path(target.name))]  # in its folder
    assert torch.load(target, weights_only=True) == {"global_step": 7}
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, target)
    before = target.read_bytes()
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(FmnistError) as info:
        AtomicCheckpointIO().save_checkpoint({"global_step": 2}, target)
    assert_error_names(str(info.value), str(target), "No space left on device", "intact")
    assert target.read_bytes() == before and sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


@pytest.mark.slow
def test_a_full_disk_during_training_ends_in_one_error_and_keeps_the_run(finished_run, tmp_path, monkeypatch):
    run = _copy(finished_run, tmp_path)
    before = _files(run)
    last = (run / "checkpoints" / "last.ckpt").read_bytes()
    monkeypatch.setattr(os, "fsync", _no_space_for_checkpoints(os.fsync))
    with pytest.raises(FmnistError) as info:
        _train([f"resume={run}", "trainer.max_epochs=3"])
    assert_error_names(str(info.value), ".ckpt", "No space left on device", resume_command(run))
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == last
    after = _files(run)
    assert not [name for name in after if name.endswith(".tmp")]
    assert after["metrics.json"] == before["metrics.json"]
    with run_folder_lock(run):  # released
        pass


# 6. A last.ckpt that is damaged or of another model


def _zip_of_text(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")


def _cut_inside(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:  # the zip's index is intact, a member's header is not
        offset = archive.infolist()[-1].header_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = b"XXXX"
    path.write_bytes(bytes(data))


def _bad_pickle(path: Path) -> None:
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(path.with_suffix(".new"), "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, b"\xff" + data[1:] if info.filename.endswith("data.pkl") else data)
    path.with_suffix(".new").replace(path)


def _other_model(path: Path) -> None:
    checkpoint = torch.load(path, weights_only=True)
    checkpoint.update(state_dict=SimpleRNN().state_dict(), fmnist_model="SimpleRNN")
    torch.save(checkpoint, path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda p: p.write_bytes(os.urandom(5000)), ("is damaged",)),
        (lambda p: p.write_bytes(p.read_bytes()[:100_000]), ("is damaged",)),
        (_zip_of_text, ("is damaged",)),
        (_cut_inside, ("is damaged",)),
        (_bad_pickle, ("is damaged",)),
        (lambda p: torch.save({"state_dict": {}}, p), ("not a training checkpoint",)),
        (_other_model, ("CNN", "SimpleRNN")),
    ],
)
def test_a_damaged_or_foreign_last_ckpt_is_named_with_the_fix(finished_run, tmp_path, damage, named):
    run = _copy(finished_run, tmp_path)
    damage(run / "checkpoints" / "last.ckpt")
    before = _files(run)
    with pytest.raises(FmnistError) as info:
        _train([f"resume={run}", "trainer.max_epochs=3"])
    # the file, what is wrong with it, and the fix: the run's own checkpoints/epoch_NNN.ckpt
    assert_error_names(str(info.value), str(run / "checkpoints" / "last.ckpt"), *named, "epoch_NNN.ckpt")
    assert _files(run) == before


@pytest.mark.slow
def test_a_damaged_last_ckpt_on_the_command_line_is_one_line(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    _zip_of_text(run / "checkpoints" / "last.ckpt")
    result = run_cli("fmnist.train", f"resume={run}", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert_one_error_line(result, f"resume={run}", f"{run}/checkpoints/last.ckpt", "is damaged")


# 7. The resume command after an interrupt works when pasted, whatever the folder's name

NAMES = [
    "plain",
    "with space",
    "it's",
    'say "hi"',
    "both ' and \"",
    "é ü ñ 日本",
    "a=b",
    "a,b",
    "[x]",
    "{y}",
    "(z)",
    "key: value",
    "back\\slash",
    "ends with \\",
    "quote \\' after backslash",
    "$HOME",
    "${oc.env:HOME}",
    "tab\there",
    "null",
    "42",
    "true",
    "~",
    "-dash",
    "semi;colon & amp | pipe",
]


@pytest.mark.parametrize("name", NAMES)
def test_the_printed_resume_command_gives_the_folder_back(tmp_path, name):
    run = tmp_path / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run / "checkpoints").mkdir()
    torch.save({}, run / "checkpoints" / "last.ckpt")
    message = interrupted_message(run)
    command = message.split("continue it with `", 1)[1][:-1]
    assert command == resume_command(run)
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "fmnist.train"] and len(words) == 4
    value = OverridesParser.create().parse_overrides(words[3:])[0].value()
    assert OmegaConf.create({"resume": value}).resume == str(run)  # as the run reads it
    if "${" in name:  # Hydra itself cannot run there: said in one line
        with pytest.raises(FmnistError) as info:
            cli_args(["fmnist.train", words[3]])
        assert_error_names(str(info.value), "Hydra", "'${'")
    else:
        assert cli_args(["fmnist.train", words[3]])[1] == words[3]  # finds the folder, no error
    try:
        assert compose_train([words[3], f"output_dir={tmp_path}"]).resume == str(run)
    finally:
        GlobalHydra.instance().clear()
