"""Finding, checking and reading the four original Fashion-MNIST IDX files, with one clear error for each
bad file.

Every size a file announces is checked before anything of that size is allocated or written: its IDX
header against Fashion-MNIST's shapes, a cap on the image count and the file's real size; a `.gz` is
unpacked as a stream, at most the size its header announces. Only regular files are opened (a FIFO would
block the reader forever), and a file is read through the descriptor it was checked on.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import stat
import struct
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import torch
from torchvision.datasets import FashionMNIST

from fmnist.utils.errors import FmnistError, interruptible
from fmnist.utils.files import atomic_writer, place_file

CLASS_NAMES = tuple(FashionMNIST.classes)


RAW_FILES = tuple(os.path.splitext(os.path.basename(url))[0] for url, _ in FashionMNIST.resources)


DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


FIX_RAW = "Fix: replace it with the original Fashion-MNIST file"


# Fashion-MNIST has 60,000 training and 10,000 test images; a header announcing more than this is refused
# before anything of its size is allocated or unpacked (784 MB of pixels at most).
MAX_IMAGES = 1_000_000
IMAGE_SHAPE = (28, 28)
_BLOCK = 1 << 20  # bytes unpacked or copied at a time


def raw_folder(root: str | os.PathLike) -> Path:
    """The folder torchvision's FashionMNIST reads its IDX files from."""
    return Path(root) / "FashionMNIST" / "raw"


def ensure_raw_files(
    root: str | os.PathLike, search_dirs: Sequence[str] = (DEBIAN_DIR,), download: bool = False
) -> Path:
    """Make the four IDX files present in `<root>/FashionMNIST/raw/`, or raise one clear FmnistError.

    Order: already there (then checked from their headers and sizes); the `.gz` files in one of
    `search_dirs` (unpacked into place, each checked before it is placed; their MD5 is not checked since
    Debian recompressed them); torchvision's download if `download`.
    """
    check_root(root)
    raw = raw_folder(root)
    if all((raw / name).exists() for name in RAW_FILES):  # a FIFO or folder there is named by check_split
        with _interruptible(f"reading the Fashion-MNIST files in {raw}"):
            check_split(root, train=True)
            check_split(root, train=False)
        return raw
    for folder in search_dirs:
        folder = Path(folder)
        if all((folder / f"{name}.gz").is_file() or (folder / name).is_file() for name in RAW_FILES):
            with _interruptible(f"unpacking the Fashion-MNIST files from {folder} into {raw}"), _placing(raw):
                raw.mkdir(parents=True, exist_ok=True)
                # Unpack all four beside the target, then rename: a bad file places none, and DDP ranks may
                # place the same files at once. The staging folder goes on any failure, Ctrl-C included.
                with tempfile.TemporaryDirectory(dir=raw) as staging:
                    for name in RAW_FILES:
                        plain = (folder / name).is_file()
                        _copy_idx(folder / name if plain else folder / f"{name}.gz", Path(staging) / name, not plain)
                    for name in RAW_FILES:
                        place_file(Path(staging) / name, raw / name)
            return raw
    searched = ", ".join([str(raw), *map(str, search_dirs)])
    if download:
        try:
            with _interruptible(f"downloading Fashion-MNIST into {raw}"):
                FashionMNIST(str(root), train=True, download=True)
                FashionMNIST(str(root), train=False, download=True)
        except Exception as error:  # noqa: BLE001 - any network failure ends in the same advice
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise FmnistError(
                f"Fashion-MNIST not found in {searched} and the download failed ({reason}). "
                "Fix: `apt-get install dataset-fashion-mnist`, or put the four IDX files in "
                f"{raw}."
            ) from None
        check_split(root, train=True)
        check_split(root, train=False)
        return raw
    raise FmnistError(
        f"Fashion-MNIST not found in {searched}. Fix: `apt-get install dataset-fashion-mnist` "
        "(Debian), or add `data.download=true` to fetch it from the internet."
    )


def check_root(root: str | os.PathLike) -> None:
    """`data.root` must be a folder (or not exist yet)."""
    if Path(root).exists() and not Path(root).is_dir():
        raise FmnistError(
            f"data.root={root} is a file, not a folder: the data goes to <data.root>/FashionMNIST/raw/. "
            "Fix: give a folder, e.g. data.root=data"
        )


def _interruptible(what: str):
    """Ctrl-C while the data is unpacked or read: before training, nothing is lost."""
    return interruptible(what, "nothing was trained; run the command again to start over")


@contextlib.contextmanager
def _placing(raw: Path):
    try:
        yield
    except OSError as error:  # the folder cannot be made or written: read-only, full disk, a file in its place
        raise FmnistError(
            f"cannot place the Fashion-MNIST files in {raw}: {error.strerror or error}. Fix: choose "
            "a writable folder with data.root=PATH"
        ) from None


def _what(path: Path) -> str:
    """'images' or 'labels', from the official file name."""
    return "labels" if "labels" in path.name else "images"


def _file_kind(mode: int) -> str | None:
    """What a file that is not a regular file is, in words; None for a regular file."""
    kinds = (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    )
    return None if stat.S_ISREG(mode) else next((kind for test, kind in kinds if test(mode)), "special file")


def _refuse_kind(path: Path, mode: int, wanted: str) -> None:
    kind = _file_kind(mode)
    if kind is not None:
        raise FmnistError(
            f"{path} is a {kind}, not {wanted}. Fix: remove the {kind.split(' (')[0]} and put the original "
            "Fashion-MNIST file there"
        )


def _open_regular(path: Path, wanted: str) -> BinaryIO:
    """`path` opened for reading if it is a regular file (a symlink to one is followed), else one FmnistError.

    Checked before opening (opening some devices acts on them), then again on the open descriptor, which is
    the one read: a file swapped in between is refused too. O_NONBLOCK keeps a FIFO's open from blocking.
    """
    try:
        _refuse_kind(path, os.stat(path).st_mode, wanted)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            _refuse_kind(path, os.fstat(fd).st_mode, wanted)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
    except OSError as error:
        raise FmnistError(f"cannot read {path}: {error.strerror or error}. {FIX_RAW}") from None


def _header_size(what: str) -> int:
    return 4 + 4 * (3 if what == "images" else 1)


def _parse_header(header: bytes, path: Path, what: str, size: int | None) -> tuple[int, ...]:
    """The dimensions a Fashion-MNIST IDX header of `what` announces, once checked against Fashion-MNIST's
    shapes and MAX_IMAGES; `size` (the file's, None for a stream) only words a truncation."""
    ndim = 3 if what == "images" else 1
    if len(header) < 4 + 4 * ndim:
        has = f"{size} bytes" if size is not None else f"it unpacks to {len(header)} bytes"
        raise FmnistError(f"{path} is truncated: {has}, shorter than its IDX header. {FIX_RAW}")
    magic, expected_magic = int.from_bytes(header[:4], "big"), 0x0800 + ndim
    if magic != expected_magic:
        raise FmnistError(
            f"{path} is not an IDX file of {what}: magic number {magic:#010x}, expected "
            f"{expected_magic:#010x}. {FIX_RAW}"
        )
    dims = struct.unpack(f">{ndim}I", header[4 : 4 + 4 * ndim])
    shown = "x".join(map(str, dims))
    if what == "images" and dims[1:] != IMAGE_SHAPE:
        raise FmnistError(f"{path} holds {dims[1]}x{dims[2]} images, Fashion-MNIST's are 28x28. {FIX_RAW}")
    if dims[0] > MAX_IMAGES:
        raise FmnistError(
            f"{path} announces {dims[0]:,} {what} ({shown}), more than the {MAX_IMAGES:,} accepted "
            f"(Fashion-MNIST has 60,000 + 10,000). {FIX_RAW}"
        )
    if what == "images" and dims[0] == 0:
        raise FmnistError(f"{path} holds no images: its header announces {shown}. {FIX_RAW}")
    return dims


def _size_error(path: Path, dims: tuple[int, ...], what: str, expected: int, size: int, longer: bool) -> FmnistError:
    state = "longer than its header says" if longer else "truncated"
    return FmnistError(
        f"{path} is {state}: the header announces {'x'.join(map(str, dims))} {what}, "
        f"{expected:,} bytes, the file has {size:,}{' or more' if longer else ''} bytes. {FIX_RAW}"
    )


def _read_idx(path: Path, what: str, data: bool) -> tuple[tuple[int, ...], torch.Tensor | None]:
    """An official IDX file's dimensions, checked from its header and size, and with `data` its contents as
    a uint8 tensor of those dimensions (allocated only once they are checked)."""
    wanted = f"an IDX file of {what}"
    with _open_regular(path, wanted) as file:
        try:
            size = os.fstat(file.fileno()).st_size
            if size == 0:
                raise FmnistError(f"{path} is empty (0 bytes). {FIX_RAW}")
            header = file.read(_header_size(what))
            dims = _parse_header(header, path, what, size)
            expected = len(header) + math.prod(dims)
            if size != expected:
                raise _size_error(path, dims, what, expected, size, size > expected)
            if not data:
                return dims, None
            buffer = bytearray(expected - len(header))
            got = file.readinto(buffer) or 0
            if got != len(buffer) or file.read(1):  # changed since its size was read
                raise _size_error(path, dims, what, expected, len(header) + got, got == len(buffer))
        except OSError as error:
            raise FmnistError(f"cannot read {path}: {error.strerror or error}. {FIX_RAW}") from None
    return dims, torch.frombuffer(buffer, dtype=torch.uint8).view(dims)


def _copy_idx(source: Path, target: Path, gz: bool) -> None:
    """Write the IDX file `source` (gzip-compressed when `gz`) to `target`, once its header is checked:
    exactly the bytes the header announces are unpacked, and a source holding more or less is refused.

    Errors of the source are FmnistErrors naming it; an OSError is the target's (it cannot be written)."""
    what = _what(target)
    wanted = f"a gzip-compressed IDX file of {what}" if gz else f"an IDX file of {what}"
    damaged = f"{source} is damaged"

    def read(stream: BinaryIO, n: int) -> bytes:
        try:
            return stream.read(n)
        except (OSError, EOFError, zlib.error) as error:
            if isinstance(error, OSError) and error.errno is not None:
                raise FmnistError(f"cannot read {source}: {error.strerror or error}. {FIX_RAW}") from None
            raise FmnistError(f"{damaged} ({error}). Fix: replace it with an intact copy") from None

    with (
        _open_regular(source, wanted) as file,
        gzip.GzipFile(fileobj=file, mode="rb") if gz else contextlib.nullcontext(file) as stream,
    ):
        size = None if gz else os.fstat(file.fileno()).st_size
        if size == 0:
            raise FmnistError(f"{source} is empty (0 bytes). {FIX_RAW}")
        header = read(stream, _header_size(what))
        dims = _parse_header(header, source, what, size)
        expected = len(header) + math.prod(dims)
        if size is not None and size != expected:
            raise _size_error(source, dims, what, expected, size, size > expected)
        written = len(header)
        with atomic_writer(target) as out:
            out.write(header)
            while written < expected:
                block = read(stream, min(_BLOCK, expected - written))
                if not block:
                    break
                out.write(block)
                written += len(block)
        if written < expected:
            raise FmnistError(
                f"{source} is truncated: the header announces {'x'.join(map(str, dims))} {what}, "
                f"{expected:,} bytes, it {'unpacks to' if gz else 'has'} {written:,} bytes. {FIX_RAW}"
            )
        if read(stream, 1):  # one byte past the announced size: the rest is never unpacked
            raise FmnistError(
                f"{source} is longer than its header says: the header announces {'x'.join(map(str, dims))} "
                f"{what}, {expected:,} bytes, it {'unpacks to' if gz else 'has'} more. {FIX_RAW}"
            )


def _split_files(root: str | os.PathLike, train: bool) -> tuple[Path, Path]:
    return tuple(raw_folder(root) / name for name in (RAW_FILES[:2] if train else RAW_FILES[2:]))


def _checked_split(root: str | os.PathLike, train: bool) -> tuple[Path, Path, int]:
    """The split's image and label files and its image count, checked from their headers and sizes."""
    images, labels = _split_files(root, train)
    (n, _, _), _ = _read_idx(images, "images", data=False)
    (n_labels,), _ = _read_idx(labels, "labels", data=False)
    _check_pair(images, labels, n, n_labels)
    return images, labels, n


def _check_pair(images: Path, labels: Path, n_images: int, n_labels: int) -> None:
    if n_labels != n_images:
        raise FmnistError(f"{labels} has {n_labels:,} labels but {images} has {n_images:,} images. {FIX_RAW}")


def check_split(root: str | os.PathLike, train: bool) -> tuple[Path, Path]:
    """The split's image and label files, checked from their headers and sizes alone (no data is read)."""
    images, labels, _ = _checked_split(root, train)
    return images, labels


def count_images(root: str | os.PathLike, train: bool) -> int:
    """How many images the split's IDX headers announce, once checked (no image is read)."""
    return _checked_split(root, train)[2]


def load_split(root: str | os.PathLike, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One official split as (uint8 images (N, 1, 28, 28), int64 labels (N,)), or one FmnistError naming
    the broken file."""
    image_file, label_file = _split_files(root, train)
    with _interruptible(f"reading the Fashion-MNIST files in {raw_folder(root)}"):
        (n, _, _), images = _read_idx(image_file, "images", data=True)
        (n_labels,), labels = _read_idx(label_file, "labels", data=True)
    _check_pair(image_file, label_file, n, n_labels)
    if int(labels.max()) >= len(CLASS_NAMES):
        raise FmnistError(f"{label_file} holds label {int(labels.max())}, Fashion-MNIST's are 0..9. {FIX_RAW}")
    return images.unsqueeze(1), labels.long()
