"""fmnist installed as a user installs it: the built wheel in a fresh venv, and `pip install -e` of a clone named
fmnist, each run from another folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_one_error_line, tiny_run_args

pytestmark = pytest.mark.slow

# the environment of the commands: nothing that puts this checkout's fmnist on sys.path
ENV = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
ENV.update(PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0", OMP_NUM_THREADS="1")


def _run(args: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)


def _pip(*args) -> subprocess.CompletedProcess:
    result = _run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _source(folder: Path) -> Path:
    """What a build reads, copied to `folder`: building writes build/ and *.egg-info beside it, not here."""
    folder.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, folder / name)
    shutil.copytree(ROOT / "fmnist", folder / "fmnist", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return folder


def _venv(folder: Path) -> Path:
    """A fresh venv at `folder` (no pip, no fmnist); its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    return folder / "bin" / "python"


def _reach_dependencies(python: Path) -> None:
    """The dependencies of this interpreter's environment, through a .pth in the venv's site-packages. A folder a
    .pth adds has its own .pth files left unread, so an editable fmnist installed there stays out of sight."""
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=ROOT).stdout.strip()
    paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(site) / "fmnist_test_dependencies.pth").write_text("".join(f"{path}\n" for path in paths))


def _imported_from(python: Path, cwd: Path) -> tuple[Path, Path]:
    """(fmnist's __init__.py, CONF_DIR) as `python` started in `cwd` imports them."""
    code = "import fmnist, fmnist.data.idx, fmnist.utils.config as c; print(fmnist.__file__); print(c.CONF_DIR)"
    result = _run([python, "-c", code], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    init, conf = result.stdout.split()
    return Path(init).resolve(), Path(conf).resolve()


def test_the_wheel_installs_the_commands_and_their_configs(tmp_path, tiny_root):
    wheels = tmp_path / "wheels"
    _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, _source(tmp_path / "source"))
    (wheel,) = wheels.glob("fmnist-*.whl")
    venv = (tmp_path / "venv").resolve()
    python = _venv(venv)
    _pip("--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    _reach_dependencies(python)
    shutil.rmtree(tmp_path / "source")  # the commands use what the wheel installed, nothing beside it

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    init, conf = _imported_from(python, elsewhere)
    assert init.is_relative_to(venv) and conf.is_relative_to(venv), (init, conf)
    assert (conf / "train.yaml").is_file() and (conf / "model" / "cnn.yaml").is_file()

    result = _run([python, "-m", "fmnist.train", "model=nope"], cwd=elsewhere)
    assert_one_error_line(result, "model=nope", "cnn", "bilstm")
    result = _run([venv / "bin" / "fmnist"], cwd=elsewhere)  # the console script lists the commands
    assert result.returncode == 0 and "evaluate" in result.stdout, result.stderr[-3000:]

    # a real run: train.yaml, its groups and the hydra/ logging configs composed from the installed package
    result = _run([python, "-m", "fmnist.train", *tiny_run_args(tiny_root), "hydra.run.dir=run"], cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (elsewhere / "run" / "metrics.json").is_file() and (elsewhere / "run" / "train.log").is_file()


def test_an_editable_install_beside_a_clone_named_fmnist(tmp_path):
    """`python -m` puts the current folder first: the clone `fmnist/` there (with a data/ folder, as a download
    leaves it) is a namespace portion, which the editable install's path entry must beat."""
    clone = _source(tmp_path / "fmnist").resolve()
    (clone / "data" / "FashionMNIST").mkdir(parents=True)
    python = _venv(tmp_path / "venv")
    _reach_dependencies(python)  # first: the build imports setuptools (pip leaves an fmnist outside the venv alone)
    _pip("--python", python, "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-e", clone)

    init, conf = _imported_from(python, tmp_path)
    assert init == clone / "fmnist" / "__init__.py" and conf == clone / "fmnist" / "conf", (init, conf)
    result = _run([python, "-m", "fmnist.train", "model=nope"], cwd=tmp_path)
    assert_one_error_line(result, "model=nope", "cnn", "bilstm")
