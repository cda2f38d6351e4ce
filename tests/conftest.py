"""Shared fixtures: a tiny self-written Fashion-MNIST in IDX format, and the real Hydra config."""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import runpy
import signal
import socket
import struct
import subprocess
import sys
import traceback
import unittest.mock
import warnings
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from fmnist.data.idx import DEBIAN_DIR
from fmnist.utils.config import CONF_DIR, compose_config

ROOT = Path(__file__).resolve().parents[1]
CONF = Path(CONF_DIR)
REAL_DATA = Path(DEBIAN_DIR)
N_TRAIN, N_TEST = 400, 120


if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker (and per command it starts): two workers each spinning two OpenMP threads on two
    # cores slow a training several fold
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """A test that reads a trained run waits for its training: the slow tier's, wherever it is written."""
    for item in items:
        if {"trained_run", "real_bilstm"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def shop_photo(image: np.ndarray) -> Image.Image:
    """A Fashion-MNIST image as a shop photo: dark garment on white, 200x300, RGB, JPEG-compressed."""
    buffer = io.BytesIO()
    Image.fromarray(255 - image).resize((200, 300)).convert("RGB").save(buffer, "JPEG", quality=90)
    buffer.seek(0)
    return Image.open(buffer)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file (the format of the original Fashion-MNIST files) holding a uint8 array."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def tiny_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images whose class c shows as a bright band on rows 2c..2c+4: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, c in enumerate(labels):
        images[i, 2 * c + 2 : 2 * c + 6, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_tiny_fashion_mnist(folder: Path, gz: bool = False) -> Path:
    """The four Fashion-MNIST files, tiny, in `folder` (gzipped like Debian's when `gz`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in {"train": tiny_split(N_TRAIN, 0), "t10k": tiny_split(N_TEST, 1)}.items():
        for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A data root with the tiny dataset already where torchvision looks."""
    root = tmp_path_factory.mktemp("tiny_data")
    write_tiny_fashion_mnist(root / "FashionMNIST" / "raw")
    return root


def compose_train(overrides: list[str]):
    """The real `fmnist/conf/train.yaml` composed with overrides, with Hydra's runtime config set."""
    return compose_config(overrides)


@pytest.fixture
def train_cfg(tmp_path, tiny_root):
    """A factory: the composed config for a tiny CPU run writing into tmp_path."""

    def make(model: str = "cnn", *extra: str):
        return compose_train(
            [
                f"model={model}",
                f"data.root={tiny_root}",
                "data.search_dirs=[]",
                f"output_dir={tmp_path}",
                "debug=tiny",  # one CPU epoch in batches of 50: its batch limits are above the tiny splits' counts
                *extra,
            ]
        )

    yield make
    GlobalHydra.instance().clear()


def free_port() -> int:
    """A loopback TCP port that nothing listens on now (for a test's own server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# FMNIST_TEST_PROCESS=1 runs every command of the suite in a fresh interpreter, as before run_cli ran them in-process.
ALWAYS_A_PROCESS = os.environ.get("FMNIST_TEST_PROCESS") == "1"


def run_cli(*args: str, cwd: Path, timeout: int = 300, process: bool = False) -> subprocess.CompletedProcess:
    """`python -m fmnist.<args>` as a user would type it: its exit status, stdout and stderr.

    It runs inside the test process (`runpy`, as `python -m` does, with the interpreter's global state put
    back afterwards), which spares each call the ~6 s of imports of a fresh interpreter. `process=True`
    starts a real one: for what only a process shows (signals, a clean import, concurrency, a timeout).
    """
    if process or ALWAYS_A_PROCESS:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
        return subprocess.run(
            [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
        )
    return run_in_process(args[0], list(args[1:]), cwd)


@contextlib.contextmanager
def _interpreter_state_restored():
    """Put back what a command changes in the interpreter: argv, cwd, environment, logging, warnings filters,
    signal handlers, random states, torch's global settings and Hydra's global config and singletons."""
    import random

    import numpy as np
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobRuntime

    argv, saved_argv, cwd, environ = sys.argv, sys.argv[:], os.getcwd(), dict(os.environ)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    loggers = [logging.root, *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    logger_state = [(lg, lg.handlers[:], lg.level, lg.disabled, lg.propagate) for lg in loggers]
    known, handlers_before = {id(lg) for lg in loggers}, {id(h) for lg in loggers for h in lg.handlers}
    disable = logging.root.manager.disable
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    torch_state = (
        torch.get_num_threads(),
        torch.get_float32_matmul_precision(),
        torch.get_default_dtype(),
        torch.are_deterministic_algorithms_enabled(),
    )
    hydra_config, job_runtime = HydraConfig.instance().cfg, JobRuntime.instance().conf
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.argv = argv
        argv[:] = saved_argv
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        made = [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
        for logger in [logging.root, *made]:
            for handler in logger.handlers:
                if id(handler) not in handlers_before:
                    handler.close()  # the command's train.log, tune.log, its console on a captured stream
            if id(logger) not in known:
                logger.handlers.clear()
                logger.level, logger.disabled, logger.propagate = logging.NOTSET, False, True
        for logger, logger_handlers, level, disabled, propagate in logger_state:
            logger.handlers[:] = logger_handlers
            logger.level, logger.disabled, logger.propagate = level, disabled, propagate
        logging.root.manager._clear_cache()
        logging.disable(disable)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        threads, precision, dtype, deterministic = torch_state
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)
        torch.set_default_dtype(dtype)
        torch.use_deterministic_algorithms(deterministic)
        torch.set_flush_denormal(False)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg, JobRuntime.instance().conf = hydra_config, job_runtime


def run_in_process(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m module args...` run by runpy in this interpreter; what it prints is captured, what it raises
    becomes an exit status as Python's own would (SystemExit's code or message; a traceback and 1)."""
    import hydra._internal.utils as hydra_utils
    from _pytest.outcomes import OutcomeException

    stdout, stderr = io.StringIO(), io.StringIO()
    with (
        _interpreter_state_restored(),
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
        # coverage's tracer makes Hydra think a debugger runs and re-raise what it would print as a user error
        unittest.mock.patch.object(hydra_utils, "is_under_debugger", lambda: False),
    ):
        os.environ.update(HYDRA_FULL_ERROR="0", PYTHONWARNINGS="ignore")
        os.chdir(cwd)
        sys.argv[:] = [module, *args]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as stop:
            if stop.code is None or isinstance(stop.code, int):
                status = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
                status = 1
        except (KeyboardInterrupt, OutcomeException):  # the developer's Ctrl-C, pytest's timeout or skip
            raise
        except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback and status 1
            traceback.print_exc()
            status = 1
    command = [sys.executable, "-m", module, *args]
    return subprocess.CompletedProcess(command, status, stdout.getvalue(), stderr.getvalue())


def assert_error_names(message: str, *named: str) -> str:
    """An error's message is one line and names each of `named` (the key, the bad value, the fix's setting):
    what it says around them is the code's to word."""
    assert message and "\n" not in message.strip(), message
    for needle in named:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def assert_one_error_line(result: subprocess.CompletedProcess, *named: str) -> str:
    """A command failed as a user should see it: a non-zero status, no traceback, and one line starting
    `error:` that names each of `named`; returns that line."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return assert_error_names(errors[0], *named)


def trained_run_overrides(tiny_root: Path) -> list[str]:
    """The overrides `trained_run` trains with (its output_dir aside)."""
    return ["model=cnn", f"data.root={tiny_root}", "data.search_dirs=[]", "debug=tiny", "trainer.max_epochs=2"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_root) -> Path:
    """One short CNN training on the tiny dataset, shared by the tests that need a finished run."""
    from fmnist.training.fit import train

    run_dir = tmp_path_factory.mktemp("run")
    train(compose_train([*trained_run_overrides(tiny_root), f"output_dir={run_dir}"]))
    GlobalHydra.instance().clear()
    return run_dir


@pytest.fixture(scope="session")
def real_bilstm(tmp_path_factory) -> Path:
    """A BiLSTM trained a little (200 batches) on the real Fashion-MNIST; its best checkpoint."""
    if not (REAL_DATA / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("needs the real Fashion-MNIST: apt-get install dataset-fashion-mnist")
    from fmnist.training.fit import train

    run_dir = tmp_path_factory.mktemp("real_bilstm")
    cfg = compose_train(
        [
            "model=bilstm",
            f"data.root={tmp_path_factory.mktemp('real_data')}",
            f"output_dir={run_dir}",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=200",
            "trainer.limit_val_batches=10",
            "trainer.limit_test_batches=10",
            "trainer.enable_progress_bar=false",
            "logger={}",
        ]
    )
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    return run_dir / metrics["best_checkpoint"]


@pytest.fixture
def no_data_access(monkeypatch):
    """Any attempt to find, size or read the data fails the test."""
    import fmnist.analysis.explore
    import fmnist.data.datamodule
    import fmnist.data.idx
    import fmnist.training.checks

    def touched(*args, **kwargs):
        raise AssertionError("the data was touched")

    modules = (fmnist.data.idx, fmnist.data.datamodule, fmnist.training.checks, fmnist.analysis.explore)
    for name in ("ensure_raw_files", "load_split", "count_images"):
        for module in modules:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, touched)


def completed_metrics(**changes) -> dict:
    """A completed run's metrics.json as fmnist.train writes it (the keys a comparison reads), with `changes`."""
    metrics = {
        "model": "cnn",
        "status": "completed",
        "seed": 1,
        "device": "cpu",
        "epochs": 1,
        "batch_size": 100,
        "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.001},
        "test/acc": 0.8,
        "test/macro_f1": 0.79,
        "test/f1/Shirt": 0.5,
        "train_seconds": 3.0,
        "params_total_keras": 1234,
    }
    return {**metrics, **changes}


def tiny_run_args(tiny_root: Path) -> list[str]:
    """A one-epoch SimpleRNN run of the real command on the tiny data, without TensorBoard."""
    return ["model=rnn", "debug=tiny", f"data.root={tiny_root}", "data.search_dirs=[]", "logger={}"]


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory, tiny_root) -> Path:
    """One finished run of the real command (with its .hydra/), to copy and tamper with."""
    folder = tmp_path_factory.mktemp("finished_tiny_run")
    result = run_cli("fmnist.train", *tiny_run_args(tiny_root), f"hydra.run.dir={folder / 'run'}", cwd=folder)
    assert result.returncode == 0, result.stderr[-2000:]
    return folder / "run"
