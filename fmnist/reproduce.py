"""Reproduce the study: its three recipes x several seeds as one Hydra multirun, then the results table.

    python -m fmnist.reproduce                         # cnn, rnn, bilstm; seeds 1 2 3; full epochs
    python -m fmnist.reproduce --models rnn -- trainer.max_epochs=50
    python -m fmnist.reproduce --collect outputs/reproduce/A outputs/reproduce/B   # tables only
    python -m fmnist.reproduce --import-lease results.tar.gz   # the rows of a GPU lease (docs/GPU.md)

Writes the table between the `results` markers of `docs/RESULTS.md` (the text around it is kept)
and `docs/results.json`. A run with fewer epochs than the study's recipe is labelled as reduced.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from fmnist.analysis.lease import import_lease
from fmnist.analysis.results import results_table, write_results
from fmnist.analysis.runs import aggregate, find_runs
from fmnist.utils.console import quiet_pipe
from fmnist.utils.errors import FmnistError


@quiet_pipe
def main(argv: list[str] | None = None) -> int:
    """Train and tabulate, only tabulate, or import a lease; return the exit status (0, 2 or the multirun's)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "rnn", "bilstm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--sweep-dir", default=None, help="multirun folder (default outputs/reproduce/<time>)")
    parser.add_argument(
        "--collect", nargs="*", default=[], help="also (or, with no training, only) tabulate the runs in these folders"
    )
    parser.add_argument(
        "--import-lease",
        metavar="FILE",
        type=Path,
        help="write the rows of benchmarks/lease.sh's summary.json or results.tar.gz into the docs, and stop",
    )
    parser.add_argument("--docs", default="docs", help="where RESULTS.md and results.json go")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job, after --")
    args = parser.parse_args(argv)
    folders = list(args.collect)
    try:
        if args.import_lease:
            rows, speed, left_out = import_lease(args.import_lease, Path(args.docs))
            for line in left_out[:20]:
                print(f"left out: {line}")
            if len(left_out) > 20:
                print(f"left out: {len(left_out) - 20} more rows")
            if rows:
                print(results_table(rows))
            for row in speed:
                acc = row.get("acc_tta", float("nan"))
                print(f"speedrun {row['experiment']}: {acc:.4f} with flip TTA, {row['seeds']} seeds")
            print(f"imported {len(rows)} training rows and {len(speed)} speedrun rows into {args.docs}/")
            return 0
        if not args.collect or args.overrides or args.sweep_dir:
            sweep = args.sweep_dir or f"outputs/reproduce/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
            command = [
                sys.executable,
                "-m",
                "fmnist.train",
                "-m",
                f"model={','.join(args.models)}",
                f"seed={','.join(map(str, args.seeds))}",
                f"hydra.sweep.dir={sweep}",
                *args.overrides,
            ]
            print("+", " ".join(command), flush=True)
            subprocess.run(command, check=True)
            folders.append(sweep)
        runs = find_runs(folders)
        if not runs:
            raise FmnistError(f"no runs with metrics.json in {', '.join(folders)}")
        left_out = [r for r in runs if r["state"] != "completed"]
        for run in left_out[:20]:  # each note is one line (fmnist.analysis.runs)
            print(f"left out: {run['run_dir']}: {run['state']}{': ' + run['note'] if run['note'] else ''}")
        if len(left_out) > 20:
            print(f"left out: {len(left_out) - 20} more runs")
        rows = aggregate(runs)
        write_results(rows, Path(args.docs))
        print(results_table(rows))
        print(f"wrote {args.docs}/RESULTS.md and {args.docs}/results.json")
    except FmnistError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"error: the multirun failed (exit {error.returncode}); finished jobs are kept", file=sys.stderr)
        return error.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
