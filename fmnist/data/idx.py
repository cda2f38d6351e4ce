"""Finding, checking and reading the four original Fashion-MNIST IDX files, with one clear error for each
bad file (torchvision parses them).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import struct
import sys
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import extract_archive

from fmnist.utils.errors import FmnistError

CLASS_NAMES = tuple(FashionMNIST.classes)


RAW_FILES = tuple(os.path.splitext(os.path.basename(url))[0] for url, _ in FashionMNIST.resources)


DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


FIX_RAW = "Fix: replace it with the original Fashion-MNIST file"


def raw_folder(root: str | os.PathLike) -> Path:
    """The folder torchvision's FashionMNIST reads its IDX files from."""
    return Path(root) / "FashionMNIST" / "raw"


def ensure_raw_files(
    root: str | os.PathLike, search_dirs: Sequence[str] = (DEBIAN_DIR,), download: bool = False
) -> Path:
    """Make the four IDX files present in `<root>/FashionMNIST/raw/`, or raise one clear FmnistError.

    Order: already there; the `.gz` files in one of `search_dirs` (decompressed into place; their
    MD5 is not checked since Debian recompressed them); torchvision's download if `download`.
    """
    check_root(root)
    raw = raw_folder(root)
    if all((raw / name).exists() for name in RAW_FILES):  # a folder in a file's place is named by check_split
        return raw
    for folder in search_dirs:
        folder = Path(folder)
        if all((folder / f"{name}.gz").is_file() or (folder / name).is_file() for name in RAW_FILES):
            with _interruptible(f"unpacking the Fashion-MNIST files from {folder} into {raw}"), _placing(raw):
                raw.mkdir(parents=True, exist_ok=True)
                # Extract beside the target and rename: DDP ranks may place the same files at once.
                with tempfile.TemporaryDirectory(dir=raw) as staging:
                    for name in RAW_FILES:
                        if (folder / name).is_file():
                            shutil.copyfile(folder / name, Path(staging) / name)
                        else:
                            _extract(folder / f"{name}.gz", staging)
                        os.replace(Path(staging) / name, raw / name)
            return raw
    searched = ", ".join([str(raw), *map(str, search_dirs)])
    if download:
        try:
            with _interruptible(f"downloading Fashion-MNIST into {raw}"):
                FashionMNIST(str(root), train=True, download=True)
                FashionMNIST(str(root), train=False, download=True)
            return raw
        except Exception as error:  # noqa: BLE001 - any network failure ends in the same advice
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise FmnistError(
                f"Fashion-MNIST not found in {searched} and the download failed ({reason}). "
                "Fix: `apt-get install dataset-fashion-mnist`, or put the four IDX files in "
                f"{raw}."
            ) from None
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


class DataInterrupted(SystemExit):
    """Ctrl-C while the data was unpacked or read: the program ends with exit status 130, after one line."""


@contextlib.contextmanager
def _interruptible(what: str):
    try:
        yield
    except KeyboardInterrupt:
        # Before training, nothing is lost: one line instead of a traceback, and 128 + SIGINT as shells report it.
        print(f"interrupted while {what}: nothing was trained; run the command again to start over", file=sys.stderr)
        raise DataInterrupted(130) from None


@contextlib.contextmanager
def _placing(raw: Path):
    try:
        yield
    except OSError as error:  # the folder cannot be made or written: read-only, full disk, a file in its place
        raise FmnistError(
            f"cannot place the Fashion-MNIST files in {raw}: {error.strerror or error}. Fix: choose "
            "a writable folder with data.root=PATH"
        ) from None


def _extract(archive: Path, folder: str) -> None:
    try:
        extract_archive(str(archive), folder)
    except (OSError, EOFError, zlib.error) as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise  # writing failed (a full disk, ...), not the archive
        raise FmnistError(f"{archive} is damaged ({error}). Fix: replace it with an intact copy") from None


def _idx_dims(path: Path, ndim: int, what: str) -> tuple[int, ...]:
    """The dimensions an IDX file of unsigned bytes announces, once its magic number and size are checked."""
    if path.is_dir():
        raise FmnistError(
            f"{path} is a folder, not an IDX file of {what}. Fix: remove the folder and put the "
            "original Fashion-MNIST file there"
        )
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            header = file.read(4 + 4 * ndim)
    except OSError as error:
        raise FmnistError(f"cannot read {path}: {error.strerror or error}. {FIX_RAW}") from None
    if size == 0:
        raise FmnistError(f"{path} is empty (0 bytes). {FIX_RAW}")
    if len(header) < 4 + 4 * ndim:
        raise FmnistError(f"{path} is truncated: {size} bytes, shorter than its IDX header. {FIX_RAW}")
    magic, expected_magic = int.from_bytes(header[:4], "big"), 0x0800 + ndim
    if magic != expected_magic:
        raise FmnistError(
            f"{path} is not an IDX file of {what}: magic number {magic:#010x}, expected "
            f"{expected_magic:#010x}. {FIX_RAW}"
        )
    dims = struct.unpack(f">{ndim}I", header[4:])
    expected = len(header) + math.prod(dims)
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise FmnistError(
            f"{path} is {state}: the header announces {'x'.join(map(str, dims))} {what}, "
            f"{expected:,} bytes, the file has {size:,} bytes. {FIX_RAW}"
        )
    return dims


def check_split(root: str | os.PathLike, train: bool) -> tuple[Path, Path]:
    """The split's image and label files, checked from their headers and sizes alone (no data is read)."""
    images, labels = (raw_folder(root) / name for name in (RAW_FILES[:2] if train else RAW_FILES[2:]))
    n, height, width = _idx_dims(images, 3, "images")
    if (height, width) != (28, 28):
        raise FmnistError(f"{images} holds {height}x{width} images, Fashion-MNIST's are 28x28. {FIX_RAW}")
    if n == 0:
        raise FmnistError(f"{images} holds no images: its header announces 0x28x28. {FIX_RAW}")
    (n_labels,) = _idx_dims(labels, 1, "labels")
    if n_labels != n:
        raise FmnistError(f"{labels} has {n_labels:,} labels but {images} has {n:,} images. {FIX_RAW}")
    return images, labels


def count_images(root: str | os.PathLike, train: bool) -> int:
    """How many images the split's IDX headers announce, once checked (no image is read)."""
    images, _ = check_split(root, train)
    return _idx_dims(images, 3, "images")[0]


def load_split(root: str | os.PathLike, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One official split as (uint8 images (N, 1, 28, 28), int64 labels (N,)), or one FmnistError naming
    the broken file."""
    _, label_file = check_split(root, train)
    with _interruptible(f"reading the Fashion-MNIST files in {raw_folder(root)}"):
        dataset = FashionMNIST(str(root), train=train, download=False)
    labels = dataset.targets.long()
    if len(labels) and int(labels.max()) >= len(CLASS_NAMES):
        raise FmnistError(f"{label_file} holds label {int(labels.max())}, Fashion-MNIST's are 0..9. {FIX_RAW}")
    return dataset.data.unsqueeze(1).contiguous(), labels
