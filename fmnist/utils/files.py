"""The one way fmnist writes a file: whole or not at all, and never through a link.

Every file a command writes goes through `atomic_writer` (or `write_atomically`, `write_text`, `write_json`,
`write_figure`, which use it): a new file created exclusively in the target's folder, fsync, rename over the
target. A link at the target is replaced, never followed, and a folder that is a link is refused (a planted
`checkpoints` link to another run's folder cannot send a write there). Locks open through `open_lock`, which
follows no link either. "Already exists" means `os.path.lexists`: a dangling link exists.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from fmnist.utils.errors import FmnistError

_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _fix(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space on that disk"
    if error.errno in (errno.ELOOP, errno.ENOTDIR):
        return "give the folder itself, not a link to it"
    return "make the folder writable"


def _open_folder(folder: Path) -> int:
    """A descriptor of `folder` (made if missing), opened without following a link at its last component."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(folder, _NOFOLLOW_DIR)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR) and folder.is_symlink():
            raise OSError(errno.ELOOP, "the folder is a link, which fmnist does not write through") from None
        raise


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, then: str = "") -> Iterator[BinaryIO]:
    """A new binary file to fill, which replaces `path` whole when the block ends without an error.

    The file is created exclusively in `path`'s folder (made if missing; a folder that is a link is refused),
    then fsync and rename: a link at `path` is replaced, not followed. On any error the temporary file is removed
    and whatever was at `path` stays as it was; an OSError (a full disk, a read-only folder) becomes one
    FmnistError naming the file, with `then`: what to do after the fix.
    """
    target, folder, temp = Path(path), None, None
    try:
        folder = _open_folder(target.parent)
        for _ in range(100):
            name = f".{target.name[:200]}.{secrets.token_hex(6)}.tmp"
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(name, flags, 0o666, dir_fd=folder)
            except FileExistsError:
                continue
            temp = name
            break
        else:
            raise OSError(errno.EEXIST, "no free temporary name")
        with open(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target.name, src_dir_fd=folder, dst_dir_fd=folder)
        temp = None
        os.fsync(folder)  # the rename itself survives a crash
    except OSError as error:
        kept = f"the previous {target.name} is intact" if os.path.lexists(target) else "nothing was written"
        raise FmnistError(
            f"cannot write {target}: {error.strerror or error} ({kept}). "
            f"Fix: {_fix(error)}{', then ' + then if then else ''}"
        ) from None
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=folder)
        if folder is not None:
            os.close(folder)


def write_atomically(path: str | os.PathLike, data: bytes | memoryview, then: str = "") -> None:
    """Write `data` to `path` whole or not at all, never through a link (`atomic_writer`)."""
    with atomic_writer(path, then) as file:
        file.write(data)


def place_file(made: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a file that fmnist has just written whole (`made`, e.g. in a staging folder of the same disk) to
    `target`, replacing a link there rather than following it. OSError as from os.replace."""
    os.replace(made, target)


def write_text(path: str | os.PathLike, text: str, then: str = "") -> None:
    """`write_atomically` for text (UTF-8)."""
    write_atomically(path, text.encode(), then)


def write_json(path: str | os.PathLike, value: Any, then: str = "") -> None:
    """`write_atomically` for a JSON document, indented, ending with a newline."""
    write_atomically(path, (json.dumps(value, indent=2) + "\n").encode(), then)


def write_figure(fig, path: str | os.PathLike, **savefig: Any) -> None:
    """A matplotlib figure saved as PNG through `write_atomically` (matplotlib itself never opens the path)."""
    image = io.BytesIO()
    fig.savefig(image, format="png", **savefig)
    write_atomically(path, image.getbuffer())


def open_lock(path: str | os.PathLike):
    """The lock file `path` opened read-write as a binary file object (created if missing, never truncated,
    never through a link); the caller takes the fcntl lock on it. OSError as from os.open."""
    return open(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666), "r+b", buffering=0)


class LogFile(logging.FileHandler):
    """logging's FileHandler (append, UTF-8 by default) that opens its file without following a link."""

    def __init__(self, filename: str | os.PathLike, mode: str = "a", encoding: str | None = "utf-8", **kwargs: Any):
        super().__init__(filename, mode, encoding, **kwargs)

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without anchors and aliases: a 3 KB "billion laughs" cannot expand."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases are not read here", event.start_mark)
        return super().compose_node(parent, index)


def read_bytes(path: str | os.PathLike, max_bytes: int, nofollow: bool = False) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (with `nofollow`, never through a link); OSError, or
    ValueError saying why it is not read (a FIFO or device is refused without blocking on it)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    fd = os.open(path, flags)
    with open(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("is not a regular file")
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        size = f"{max_bytes >> 20} MiB" if max_bytes >= 1 << 20 else f"{max_bytes >> 10} KiB"
        raise ValueError(f"is over {size}: not a file fmnist wrote")
    return data


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of a regular file, read in 1 MiB blocks; a FIFO or device is one ValueError, never a
    read that waits forever."""
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise ValueError("is not a regular file")
        digest = hashlib.sha256()  # hashlib.file_digest is Python 3.11's, and fmnist runs on 3.10
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_yaml(path: str | os.PathLike, max_bytes: int = 1 << 20) -> Any:
    """The plain data of a YAML file written by fmnist (safe loader, no aliases, at most `max_bytes`), or one
    FmnistError naming the file: only a regular file is read, never through a link."""
    path = Path(path)
    try:
        data = read_bytes(path, max_bytes, nofollow=True)
    except OSError as error:
        reason = "it is a link, which fmnist never follows" if error.errno == errno.ELOOP else error.strerror
        raise FmnistError(f"cannot read {path}: {reason or error}") from None
    except ValueError as error:
        raise FmnistError(f"{path} {error}") from None
    try:
        return yaml.load(data, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise FmnistError(f"{path} is not readable YAML (nested too deeply)") from None
    except yaml.YAMLError as error:
        raise FmnistError(f"{path} is not readable YAML ({' '.join(str(error).split())[:200]})") from None


def write_section(page: Path, name: str, body: str, title: str) -> None:
    """Replace the text between `<!-- name:start -->` and `<!-- name:end -->` in a Markdown page.

    The text around the markers (hand-written narrative) is kept; a missing page or missing
    markers are created.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = page.read_text() if page.is_file() else f"# {title}\n\n{start}\n{end}\n"
    if start not in text or end not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    write_text(page, f"{head}{start}\n{body}\n{end}{tail}")
