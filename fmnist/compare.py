"""Compare runs side by side: `python -m fmnist.compare RUN_OR_SWEEP_DIR... [--out DIR]`.

The command only; the work is done by fmnist/analysis/compare.py.
"""

from __future__ import annotations

import argparse
import sys

from fmnist.analysis.compare import compare
from fmnist.utils.console import quiet_pipe
from fmnist.utils.errors import FmnistError


@quiet_pipe
def main(argv: list[str] | None = None) -> int:
    """Compare the runs given on the command line; return the exit status (0, or 2 after printing the error)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders or multirun folders")
    parser.add_argument("--out", help="where to write (default: the first folder given)")
    parser.add_argument("--overwrite", action="store_true", help="replace the comparison files already there")
    args = parser.parse_args(argv)
    try:
        compare(args.paths, args.out, overwrite=args.overwrite)
    except FmnistError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(
            f"error: cannot write the comparison to {args.out or args.paths[0]}: {error.strerror or error}. "
            "Fix: choose a writable folder with --out DIR",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
