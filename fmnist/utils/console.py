"""Printing for the person at the terminal, so that a run's log file keeps the same lines."""

from __future__ import annotations

import logging

log = logging.getLogger("fmnist")


def say(text: str) -> None:
    """`text` through logging under a Hydra run (the terminal and the run's log get it), else printed."""
    if logging.getLogger().handlers:
        log.info(text)
    else:
        print(text)
