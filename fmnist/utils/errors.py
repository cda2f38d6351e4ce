"""The one exception type whose message is shown to the user as a single line, without a traceback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any


class FmnistError(Exception):
    """A user-facing error: bad input, missing data, an unusable checkpoint."""


class Interrupted(SystemExit):
    """Ctrl-C where nothing is lost: the program ends with exit status 130 (128 + SIGINT, as shells report it)."""


@contextlib.contextmanager
def interruptible(what: str, outcome: str) -> Iterator[None]:
    """Ctrl-C inside the block ends the program with one line, `interrupted while <what>: <outcome>`, and
    status 130, instead of a traceback: for work that leaves nothing half-written."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"interrupted while {what}: {outcome}", file=sys.stderr)
        raise Interrupted(130) from None


def exit_on_error(command: Callable[..., Any], *args: Any) -> Any:
    """Run an entry point's work; an FmnistError ends the program with its one-line message."""
    try:
        return command(*args)
    except FmnistError as error:
        raise SystemExit(f"error: {error}") from None
