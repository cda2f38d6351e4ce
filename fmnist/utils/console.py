"""Printing for the person at the terminal, so that a run's log file keeps the same lines."""

from __future__ import annotations

import functools
import logging
import os
import sys

log = logging.getLogger("fmnist")


def say(text: str) -> None:
    """`text` through logging under a Hydra run (the terminal and the run's log get it), else printed."""
    if logging.getLogger().handlers:
        log.info(text)
    else:
        print(text)


def quiet_pipe(main):
    """A command's entry point that ends quietly, status 1, when its reader closes the pipe (`--help | head`),
    as Unix tools do, instead of a BrokenPipeError traceback."""

    @functools.wraps(main)
    def command(*args, **kwargs):
        try:
            result = main(*args, **kwargs)
            sys.stdout.flush()  # inside the guard: the interpreter's last flush would print the traceback
            return result
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None

    return command
