"""The one exception type whose message is shown to the user as a single line, without a traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class FmnistError(Exception):
    """A user-facing error: bad input, missing data, an unusable checkpoint."""


def exit_on_error(command: Callable[..., Any], *args: Any) -> Any:
    """Run an entry point's work; an FmnistError ends the program with its one-line message."""
    try:
        return command(*args)
    except FmnistError as error:
        raise SystemExit(f"error: {error}") from None
