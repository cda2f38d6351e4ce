"""Hostile data files: every size an IDX file or its `.gz` announces is checked before anything of that size is
allocated or unpacked, only regular files are read, and each refusal is one error that leaves nothing behind."""

import contextlib
import functools
import gzip
import os
import resource
import signal
import socket
import struct
from pathlib import Path

import numpy as np
import pytest

import fmnist.data.idx
from fmnist.data.idx import MAX_IMAGES, check_split, count_images, ensure_raw_files, load_split, raw_folder
from fmnist.utils.errors import FmnistError
from tests.conftest import (
    N_TRAIN,
    assert_error_names,
    assert_one_error_line,
    idx_bytes,
    run_cli,
    tiny_split,
    write_tiny_fashion_mnist,
)

HUGE = 10_000_000  # images announced by the hostile headers: 7.8 GB of pixels
HEADROOM = 2 << 30  # address space a test may map beyond what the process maps when it starts
WRITE_CAP = 64 << 20  # the largest file a test may write


@contextlib.contextmanager
def bounded():
    """Address space capped at what the process maps now + 2 GiB, and files at 64 MiB, while it lasts: an
    allocation or a file that follows a hostile header fails the test fast instead of taking the machine's
    memory or disk. SIGXFSZ is ignored so that a write past the cap is an OSError, not the end of pytest."""
    vm_size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
    saved = {limit: resource.getrlimit(limit) for limit in (resource.RLIMIT_AS, resource.RLIMIT_FSIZE)}
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    for limit, cap in ((resource.RLIMIT_AS, vm_size + HEADROOM), (resource.RLIMIT_FSIZE, WRITE_CAP)):
        hard = saved[limit][1]
        resource.setrlimit(limit, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        for limit, values in saved.items():
            resource.setrlimit(limit, values)
        signal.signal(signal.SIGXFSZ, handler)


def idx_header(*dims: int) -> bytes:
    """The 4 + 4 x ndim bytes that start an IDX file of unsigned bytes with these dimensions."""
    return struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def sparse_idx(path: Path, *dims: int) -> Path:
    """An IDX file exactly as long as its header announces, all of it but the header a hole (no disk used)."""
    with open(path, "wb") as file:
        file.write(idx_header(*dims))
        file.truncate(len(idx_header(*dims)) + int(np.prod(dims)))
    return path


@functools.cache
def zeros_gz(n_bytes: int) -> bytes:
    """`n_bytes` zeros gzip-compressed as repeated 16 MiB members (a valid gzip stream of about n / 1000 bytes)."""
    member = gzip.compress(bytes(16 << 20), compresslevel=9)
    return member * (n_bytes // (16 << 20))


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if not p.is_dir()] if folder.exists() else []


def train_cli(root: Path, tmp_path: Path, *extra: str):
    """`python -m fmnist.train` on `root` (run in-process), writing into tmp_path/run."""
    return run_cli(
        "fmnist.train",
        "model=cnn",
        f"data.root={root}",
        "debug=tiny",
        f"hydra.run.dir={tmp_path / 'run'}",
        *(extra or ("data.search_dirs=[]",)),
        cwd=tmp_path,
        timeout=120,
    )


def assert_nothing_trained(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert not (run / "checkpoints").exists() and not (run / "metrics.json").exists()


# ---- a header announcing more than the file or Fashion-MNIST holds ------------------------------------------


@pytest.mark.parametrize(
    "name, dims, named",
    [
        ("train-images-idx3-ubyte", (HUGE, 28, 28), ("10,000,000", f"{MAX_IMAGES:,}")),
        ("t10k-labels-idx1-ubyte", (HUGE,), ("10,000,000", f"{MAX_IMAGES:,}")),
        ("t10k-images-idx3-ubyte", (60, 4096, 4096), ("4096x4096", "28x28")),
    ],
)
def test_a_header_announcing_too_much_over_a_sparse_file_is_refused_before_allocation(tmp_path, name, dims, named):
    root = tmp_path / "root"
    raw = write_tiny_fashion_mnist(raw_folder(root))
    sparse_idx(raw / name, *dims)
    for check in (
        lambda: ensure_raw_files(root, search_dirs=[]),
        lambda: check_split(root, train=name.startswith("train")),
        lambda: count_images(root, train=name.startswith("train")),
        lambda: load_split(root, train=name.startswith("train")),
    ):
        with bounded(), pytest.raises(FmnistError) as info:
            check()
        assert_error_names(str(info.value), str(raw / name), *named)


def test_a_header_announcing_more_than_the_file_holds_is_truncated(tmp_path):
    root = tmp_path / "root"
    raw = write_tiny_fashion_mnist(raw_folder(root))
    (raw / "train-images-idx3-ubyte").write_bytes(idx_header(900_000, 28, 28) + bytes(784))
    with bounded(), pytest.raises(FmnistError) as info:
        load_split(root, train=True)
    assert_error_names(str(info.value), str(raw / "train-images-idx3-ubyte"), "truncated", "705,600,016")


def test_cli_train_on_a_sparse_file_announcing_10m_images_is_one_line(tmp_path):
    root = tmp_path / "root"
    raw = write_tiny_fashion_mnist(raw_folder(root))
    sparse_idx(raw / "train-images-idx3-ubyte", HUGE, 28, 28)
    sparse_idx(raw / "train-labels-idx1-ubyte", HUGE)
    with bounded():
        result = train_cli(root, tmp_path)
    assert_one_error_line(result, str(raw / "train-images-idx3-ubyte"), "10,000,000", f"{MAX_IMAGES:,}")
    assert_nothing_trained(tmp_path)


def test_an_uncompressed_file_in_a_search_dir_is_checked_before_it_is_copied(tmp_path):
    debian = write_tiny_fashion_mnist(tmp_path / "debian", gz=True)
    (debian / "train-images-idx3-ubyte.gz").unlink()
    sparse_idx(debian / "train-images-idx3-ubyte", HUGE, 28, 28)
    with bounded(), pytest.raises(FmnistError) as info:
        ensure_raw_files(tmp_path / "root", search_dirs=[str(debian)])
    assert_error_names(str(info.value), str(debian / "train-images-idx3-ubyte"), "10,000,000")
    assert files_under(tmp_path / "root") == []


# ---- a .gz is unpacked as a stream, at most what its header announces ---------------------------------------


def test_a_gz_announcing_10m_images_is_refused_from_its_header_and_leaves_nothing(tmp_path):
    debian = write_tiny_fashion_mnist(tmp_path / "debian", gz=True)
    bomb = debian / "t10k-images-idx3-ubyte.gz"  # the third file: the two before it are not placed either
    bomb.write_bytes(gzip.compress(idx_header(HUGE, 28, 28)) + zeros_gz(1 << 30))
    with bounded(), pytest.raises(FmnistError) as info:
        ensure_raw_files(tmp_path / "root", search_dirs=[str(debian)])
    assert_error_names(str(info.value), str(bomb), "10,000,000", f"{MAX_IMAGES:,}")
    assert files_under(tmp_path / "root") == []


def test_a_gz_with_1gib_behind_its_announced_data_stops_at_the_announced_size(tmp_path):
    # Were the 1 GiB unpacked, the 64 MiB file cap would stop it with another error.
    debian = write_tiny_fashion_mnist(tmp_path / "debian", gz=True)
    images, _ = tiny_split(N_TRAIN, 0)
    bomb = debian / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(idx_bytes(images)) + zeros_gz(1 << 30))
    with bounded(), pytest.raises(FmnistError) as info:
        ensure_raw_files(tmp_path / "root", search_dirs=[str(debian)])
    assert_error_names(str(info.value), str(bomb), "longer than its header says")
    assert files_under(tmp_path / "root") == []


@pytest.mark.parametrize(
    "content, named",
    [
        (lambda data: gzip.compress(data[: len(data) // 2]), ("truncated",)),
        (lambda data: gzip.compress(data)[:-40], ("damaged",)),
        (lambda data: b"not gzip at all", ("damaged",)),
        (lambda data: gzip.compress(data[:10]), ("truncated", "shorter than its IDX header")),
        (lambda data: gzip.compress(b"\0\0\x08\x01" + data[4:]), ("not an IDX file of images",)),
    ],
)
def test_a_broken_gz_is_one_error_naming_it_and_leaves_nothing(tmp_path, content, named):
    debian = write_tiny_fashion_mnist(tmp_path / "debian", gz=True)
    images, _ = tiny_split(N_TRAIN, 0)
    archive = debian / "train-images-idx3-ubyte.gz"
    archive.write_bytes(content(idx_bytes(images)))
    with pytest.raises(FmnistError) as info:
        ensure_raw_files(tmp_path / "root", search_dirs=[str(debian)])
    assert_error_names(str(info.value), str(archive), *named)
    assert files_under(tmp_path / "root") == []


def test_cli_train_unpacking_a_gz_bomb_is_one_line_and_leaves_nothing(tmp_path):
    debian = write_tiny_fashion_mnist(tmp_path / "debian", gz=True)
    bomb = debian / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(idx_header(HUGE, 28, 28)) + zeros_gz(1 << 30))
    with bounded():
        result = train_cli(tmp_path / "root", tmp_path, f"data.search_dirs=[{debian}]")
    assert_one_error_line(result, str(bomb), "10,000,000")
    assert files_under(tmp_path / "root") == []
    assert_nothing_trained(tmp_path)


def test_ctrl_c_while_unpacking_leaves_no_file(tmp_path, monkeypatch, capsys):
    debian = write_tiny_fashion_mnist(tmp_path / "debian", gz=True)
    copy, calls = fmnist.data.idx._copy_idx, []

    def interrupted_third(source, target, gz):
        calls.append(source)
        copy(source, target, gz)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(fmnist.data.idx, "_copy_idx", interrupted_third)
    with pytest.raises(SystemExit) as info:
        ensure_raw_files(tmp_path / "root", search_dirs=[str(debian)])
    assert info.value.code == 130 and "interrupted" in capsys.readouterr().err
    assert files_under(tmp_path / "root") == []


# ---- only regular files are read ------------------------------------------------------------------------


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return "FIFO"


def _socket(path: Path) -> str:
    server = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(path.parent)  # a relative name: tmp_path may be longer than a socket's path may be
    try:
        server.bind(path.name)
    finally:
        os.chdir(cwd)
    return "socket"


def _device(path: Path) -> str:
    path.symlink_to("/dev/zero")
    return "character device"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("make", [_fifo, _socket, _device])
@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_a_special_file_in_place_of_an_idx_file_is_one_error_not_a_hang(tmp_path, make, name):
    root = tmp_path / "root"
    raw = write_tiny_fashion_mnist(raw_folder(root))
    (raw / name).unlink()
    kind = make(raw / name)
    for check in (
        lambda: ensure_raw_files(root, search_dirs=[]),
        lambda: count_images(root, train=name.startswith("train")),
        lambda: load_split(root, train=name.startswith("train")),
    ):
        with pytest.raises(FmnistError) as info:
            check()
        assert_error_names(str(info.value), str(raw / name), kind, "not an IDX file")


@pytest.mark.timeout(120)
def test_cli_train_with_a_fifo_in_place_of_the_images_is_one_line_not_a_hang(tmp_path):
    root = tmp_path / "root"
    raw = write_tiny_fashion_mnist(raw_folder(root))
    (raw / "train-images-idx3-ubyte").unlink()
    os.mkfifo(raw / "train-images-idx3-ubyte")
    result = train_cli(root, tmp_path)
    assert_one_error_line(result, str(raw / "train-images-idx3-ubyte"), "FIFO")
    assert_nothing_trained(tmp_path)
