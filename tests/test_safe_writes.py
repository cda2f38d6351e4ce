"""One way to write a file: whole or not at all, never through a link, and nothing else in fmnist writes
another way; "already exists" counts dangling links; a new run or sweep never replaces an earlier one
wherever its folders point (issue 26's second root cause)."""

from __future__ import annotations

import ast
import fcntl
import logging
from pathlib import Path

import pytest

from fmnist.runs.folder import run_folder_lock
from fmnist.utils.checks import check_new_files
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import LogFile, open_lock, write_atomically, write_json, write_text
from tests.conftest import assert_one_error_line, run_cli, tiny_run_args

PACKAGE = Path(__file__).resolve().parent.parent / "fmnist"

# What writes or moves a file by its path; only fmnist/utils/files.py does.
PATH_METHODS = {"write_text", "write_bytes", "symlink_to", "hardlink_to"}  # pathlib's
MODULE_CALLS = {
    "os": {"open", "replace", "rename", "link", "symlink", "mkfifo"},
    "shutil": {"copy", "copy2", "copyfile", "copytree", "move"},
    "OmegaConf": {"save"},
    "np": {"save", "savez", "savetxt"},
    "logging": {"FileHandler"},
}


def _bytesio_names(tree: ast.AST) -> set[str]:
    """Names assigned from io.BytesIO() anywhere in the module: saving into them writes no file."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and func.attr == "BytesIO":
                names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    return names


def _writes_a_file(node: ast.Call, buffers: set[str]) -> bool:
    func = node.func
    if isinstance(func, ast.Name):
        if func.id == "open":
            mode = (
                node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            )
            return isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+")
        return func.id == "FileHandler"
    if not isinstance(func, ast.Attribute):
        return False
    name, owner = func.attr, func.value.id if isinstance(func.value, ast.Name) else ""
    if owner == "os" and name == "open":  # reading is fine, and os.devnull; creating or writing is files.py's
        if node.args and ast.unparse(node.args[0]) == "os.devnull":
            return False
        return any(flag in ast.unparse(node) for flag in ("O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"))
    if name in MODULE_CALLS.get(owner, ()) or name in PATH_METHODS:
        return True
    if name in ("replace", "rename") and len(node.args) == 1 and not node.keywords:  # Path.replace(target)
        return True
    if name in ("savefig", "save") and owner not in ("OmegaConf", "np"):  # figures, torch.save, PIL images
        target = node.args[1] if owner == "torch" and len(node.args) > 1 else node.args[0] if node.args else None
        return not (isinstance(target, ast.Name) and target.id in buffers)
    return False


def _writes(path: Path) -> list[str]:
    """`file:line: call` for each call in the module that writes a file another way than fmnist.utils.files."""
    tree = ast.parse(path.read_text())
    buffers = _bytesio_names(tree)
    return [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node.func)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _writes_a_file(node, buffers)
    ]


def test_every_module_writes_files_through_fmnist_utils_files():
    found = [line for module in sorted(PACKAGE.rglob("*.py")) if module.name != "files.py" for line in _writes(module)]
    assert not found, "write through fmnist.utils.files (atomic_writer, write_text, write_json, write_figure):\n" + (
        "\n".join(found)
    )


def test_the_scan_sees_each_way_of_writing(tmp_path):
    module = PACKAGE / "_scan_probe.py"
    module.write_text(
        "import os, shutil, torch\nfrom pathlib import Path\n"
        "def f(fig, p):\n"
        "    Path(p).write_text('x')\n    open(p, 'w')\n    os.replace(p, p)\n    shutil.copyfile(p, p)\n"
        "    fig.savefig(p)\n    torch.save({}, p)\n    logging.FileHandler(p)\n    'a'.replace('a', 'b')\n"
    )
    try:
        found = _writes(module)
    finally:
        module.unlink()
    assert [line.split(": ", 1)[1] for line in found] == [
        "Path(p).write_text",
        "open",
        "os.replace",
        "shutil.copyfile",
        "fig.savefig",
        "torch.save",
        "logging.FileHandler",
    ]


def test_a_link_at_the_target_is_replaced_and_a_linked_folder_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "best.yaml").write_text("PRECIOUS")
    study = tmp_path / "study"
    study.mkdir()
    (study / "best.yaml").symlink_to(victim / "best.yaml")
    write_text(study / "best.yaml", "mine\n")
    assert (victim / "best.yaml").read_text() == "PRECIOUS"
    assert not (study / "best.yaml").is_symlink() and (study / "best.yaml").read_text() == "mine\n"

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(victim)  # another run's folder
    with pytest.raises(FmnistError, match="link"):
        write_atomically(run / "checkpoints" / "last.ckpt", b"x")
    assert sorted(p.name for p in victim.iterdir()) == ["best.yaml"]  # not even a temporary file


def test_a_failed_write_leaves_what_was_there_and_no_temporary(tmp_path):
    (tmp_path / "metrics.json").mkdir()  # rename cannot replace a folder: the write fails at its last step
    (tmp_path / "metrics.json" / "keep").write_text("PRECIOUS")
    with pytest.raises(FmnistError, match="intact"):
        write_json(tmp_path / "metrics.json", {"a": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert (tmp_path / "metrics.json" / "keep").read_text() == "PRECIOUS"


def test_locks_and_logs_follow_no_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("PRECIOUS")
    (tmp_path / ".summary.lock").symlink_to(victim)
    with pytest.raises(OSError):
        open_lock(tmp_path / ".summary.lock")
    with open_lock(tmp_path / "real.lock") as lock:  # a real lock file is made, and never truncated
        fcntl.flock(lock, fcntl.LOCK_EX)
    (tmp_path / "tune.log").symlink_to(victim)
    with pytest.raises(OSError):
        LogFile(tmp_path / "tune.log")
    handler = LogFile(tmp_path / "train.log")
    handler.emit(logging.makeLogRecord({"msg": "hello"}))
    handler.close()
    assert (tmp_path / "train.log").read_text() == "hello\n"
    assert victim.read_text() == "PRECIOUS"


def test_the_run_lock_follows_no_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("PRECIOUS")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".fmnist.lock").symlink_to(victim)
    with pytest.raises(FmnistError, match=r"\.fmnist\.lock.*link"), run_folder_lock(run):
        pass
    assert victim.read_text() == "PRECIOUS"


def test_a_dangling_link_already_exists(tmp_path):
    link = tmp_path / "predictions.json"
    link.symlink_to(tmp_path / "elsewhere" / "stolen.json")
    with pytest.raises(FmnistError, match="already exists"):
        check_new_files([link], overwrite=False)
    check_new_files([link], overwrite=True)
    write_text(link, "[]\n")  # overwrite=true replaces the link itself
    assert not (tmp_path / "elsewhere").exists() and link.read_text() == "[]\n"


def test_output_dir_never_replaces_an_earlier_run_and_a_default_run_warns_nothing(tmp_path, tiny_root):
    result = run_cli("fmnist.train", *tiny_run_args(tiny_root), cwd=tmp_path)  # the default folder, outputs/rnn/<time>
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Warning" not in result.stderr, result.stderr[-2000:]  # the guard resolved hydra.run.dir
    (first,) = (tmp_path / "outputs" / "rnn").iterdir()
    before = (first / "metrics.json").read_bytes()
    result = run_cli("fmnist.train", *tiny_run_args(tiny_root), "seed=7", f"output_dir={first}", cwd=tmp_path)
    assert_one_error_line(result, "output_dir", "overwrite=true")
    assert (first / "metrics.json").read_bytes() == before


def test_a_sweep_with_its_own_subdir_never_replaces_an_earlier_sweeps_jobs(tmp_path, tiny_root):
    sweep = tmp_path / "sweep"
    (sweep / "rnn" / "0" / "checkpoints").mkdir(parents=True)  # an earlier sweep's job, one level deeper
    result = run_cli(
        "fmnist.train",
        "-m",
        *tiny_run_args(tiny_root),
        "seed=1",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=${hydra:runtime.choices.model}/${hydra.job.num}",
        cwd=tmp_path,
    )
    assert_one_error_line(result, "rnn/0", "hydra.sweep.dir")
    assert sorted(p.name for p in (sweep / "rnn" / "0").iterdir()) == ["checkpoints"]
