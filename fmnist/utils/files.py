"""Writing a file whole or not at all, and never through a link planted where the file goes."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from fmnist.utils.errors import FmnistError

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomically(path: str | os.PathLike, data: bytes | memoryview, then: str = "") -> None:
    """Write `data` to `path` whole or not at all: a temporary file in the same folder, fsync, rename.

    An OSError (a full disk, a read-only folder) removes the temporary file, leaves whatever was at
    `path` as it was and raises one FmnistError naming the file; `then` is what to do after the fix.
    """
    target, temp = Path(path), None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with open(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o666 & ~_UMASK)  # what open() would give it, not mkstemp's 0600
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
        temp = None
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a crash
        finally:
            os.close(folder)
    except OSError as error:
        kept = f"the previous {target.name} is intact" if target.exists() else "nothing was written"
        fix = (
            "free some space on that disk"
            if error.errno in (errno.ENOSPC, errno.EDQUOT)
            else "make the folder writable"
        )
        raise FmnistError(
            f"cannot write {target}: {error.strerror or error} ({kept}). Fix: {fix}{', then ' + then if then else ''}"
        ) from None
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def write_section(page: Path, name: str, body: str, title: str) -> None:
    """Replace the text between `<!-- name:start -->` and `<!-- name:end -->` in a Markdown page.

    The text around the markers (hand-written narrative) is kept; a missing page or missing
    markers are created.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = page.read_text() if page.exists() else f"# {title}\n\n{start}\n{end}\n"
    if start not in text or end not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(f"{head}{start}\n{body}\n{end}{tail}")
