"""Rows measured on a GPU lease (`benchmarks/lease.sh`) into the docs: `fmnist.reproduce --import-lease FILE`.

FILE is the lease's `summary.json` or its `results.tar.gz`, whose first member is the summary (read as a
bounded stream; nothing is extracted). The training rows go into docs/RESULTS.md and docs/results.json (a
row replaces the row of the same model, epochs, recipe and kind of device); the speedrun rows into
docs/speedrun_gpu.json and the `lease` section of docs/SPEEDRUN.md (a row replaces the row of the same tier
and device). Each row names the GPU, its driver, the torch version and the lease's date.

The file is not trusted: each row keeps only the keys it should have, each within its range, and strings of
plain characters; a row that fails is left out and said so.
"""

from __future__ import annotations

import gzip
import json
import re
import tarfile
import zlib
from collections import defaultdict
from pathlib import Path

from fmnist.analysis.results import write_results
from fmnist.analysis.runs import aggregate
from fmnist.utils.config import CONF_DIR
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import write_atomically, write_section

MAX_FILE = 64 * 2**20  # what the GPU machine returns in all
MAX_SUMMARY = 16 * 2**20  # and per file
MAX_ROWS = 5000  # a lease has hundreds of runs at most
PLAIN = re.compile(r"[^A-Za-z0-9 ._,()+-]")


def text(value, limit: int = 60) -> str:
    """A string from the file as plain characters (no newline, no markup), at most `limit` long; "unknown" for
    anything else."""
    return (PLAIN.sub("", value[: 4 * limit])[:limit] or "unknown") if isinstance(value, str) else "unknown"


def _number(value, low: float, high: float) -> bool:
    """A number in [low, high] (the comparison is exact for any int and false for NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def _integer(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _read_bytes(path: Path) -> bytes:
    """summary.json's bytes: the file itself, or the tarball's first member, each within 16 MiB."""
    if not path.is_file():
        raise FmnistError(f"--import-lease={path}: not a file (give the lease's summary.json or results.tar.gz)")
    if path.stat().st_size > MAX_FILE:
        raise FmnistError(f"--import-lease={path}: over 64 MiB, more than a lease returns")
    with open(path, "rb") as file:
        if file.read(2) != b"\x1f\x8b":  # not gzip: the summary itself
            file.seek(0)
            data = file.read(MAX_SUMMARY + 1)
            if len(data) > MAX_SUMMARY:
                raise FmnistError(f"--import-lease={path}: over 16 MiB, not a lease's summary.json")
            return data
    try:
        with gzip.open(path, "rb") as stream:
            header = stream.read(tarfile.BLOCKSIZE)
            member = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            if member.name != "summary.json" or member.type != tarfile.REGTYPE or not 0 <= member.size <= MAX_SUMMARY:
                raise FmnistError(
                    f"--import-lease={path}: its first member is not a summary.json of at most 16 MiB "
                    "(benchmarks/lease.sh writes it first)"
                )
            data = stream.read(min(member.size, MAX_SUMMARY))
    except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError) as error:
        raise FmnistError(f"--import-lease={path}: not a readable tarball ({type(error).__name__})") from None
    if len(data) != member.size:
        raise FmnistError(f"--import-lease={path}: the tarball is cut short")
    return data


def read_summary(path: Path) -> dict:
    """The lease's summary as parsed JSON, its shape checked (not yet its rows)."""
    data = _read_bytes(path)
    try:
        summary = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise FmnistError(f"--import-lease={path}: summary.json is not valid JSON ({type(error).__name__})") from None
    if not isinstance(summary, dict) or summary.get("lease") != 1:
        raise FmnistError(f"--import-lease={path}: not a summary of benchmarks/lease.sh")
    for key in ("runs", "speedrun"):
        if not isinstance(summary.get(key, []), list) or not all(isinstance(r, dict) for r in summary.get(key, [])):
            raise FmnistError(f"--import-lease={path}: its {key!r} is not a list of rows")
        if len(summary.get(key, [])) > MAX_ROWS:
            raise FmnistError(f"--import-lease={path}: over {MAX_ROWS} {key!r} rows, more than a lease makes")
    return summary


def device_label(summary: dict) -> str:
    """'NVIDIA H200, driver 580.159.03, torch 2.11.0, lease 2026-12-02'; a dry run says it is not a measurement."""
    gpu = summary.get("gpu").split(",", 2) if isinstance(summary.get("gpu"), str) else []
    driver = f", driver {text(gpu[1].strip(), 20)}" if len(gpu) > 1 else ""
    label = f"{text(summary.get('device'))}{driver}, torch {text(summary.get('torch'), 20)}"
    label += f", lease {text(summary.get('date'), 10)}"
    return label + (" (DRY run: tiny settings, not a measurement)" if summary.get("dry") is not False else "")


def sharing(row: dict) -> str:
    """', 3 at a time (MPS)' for a run that shared the GPU with others, else ''."""
    if not _integer(row.get("parallel"), 2, 64):
        return ""
    return f", {row['parallel']} at a time" + (" (MPS)" if row.get("mps") is True else "")


def known_models() -> set[str]:
    """The model names fmnist/conf/model offers (the stems of its YAML files)."""
    return {p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml")}


# A training row's keys and their ranges; everything else in the row is dropped.
RUN_NUMBERS = {
    "test/acc": (0.0, 1.0),
    "test/acc_tta": (0.0, 1.0),
    "test/macro_f1": (0.0, 1.0),
    "val/acc_best": (0.0, 1.0),
    "train_seconds": (0.0, 1e7),
}
RUN_INTEGERS = {"seed": (0, 2**31), "epochs": (1, 10_000), "batch_size": (1, 10**6), "params_total_keras": (0, 10**10)}


def clean_run(run: dict, models: set[str]) -> tuple[dict | None, str]:
    """(the row with only its checked keys, '') or (None, why it is left out)."""
    if run.get("status") != "completed":
        return None, f"status {text(run.get('status'), 30)!r}"
    if not isinstance(run.get("model"), str) or run["model"] not in models:
        return None, f"model {text(run.get('model'), 30)!r} is not one of fmnist/conf/model"
    row = {"model": run["model"], "status": "completed"}
    for key, (low, high) in RUN_NUMBERS.items():
        if key in run and run[key] is not None:
            if not _number(run[key], low, high):
                return None, f"{key} out of range"
            row[key] = run[key]
    for key, (low, high) in RUN_INTEGERS.items():
        if key in run and run[key] is not None:
            if not _integer(run[key], low, high):
                return None, f"{key} out of range"
            row[key] = run[key]
    missing = [k for k in ("test/acc", "test/macro_f1", "train_seconds", "epochs", "seed") if k not in row]
    if missing:
        return None, f"no {missing[0]}"
    optimizer = run.get("optimizer")
    if isinstance(optimizer, dict):
        row["optimizer"] = {"_target_": text(optimizer.get("_target_", "?"))}
        if _number(optimizer.get("lr"), 0.0, 100.0):
            row["optimizer"]["lr"] = optimizer["lr"]
    label = text(run.get("recipe"), 20) if run.get("recipe") not in (None, "recipe") else ""
    row["variant"] = ", ".join(v for v in (label, sharing(run)[2:]) if v)  # tf32, and whether it shared the GPU
    return row, ""


def training_rows(summary: dict) -> tuple[list[dict], list[str]]:
    """The completed training runs aggregated over seeds, as fmnist.reproduce's rows (a variant such as tf32, and
    runs that shared the GPU, apart in their recipe); and a line for each run left out."""
    models, device, groups, seen, left_out = known_models(), device_label(summary), defaultdict(list), set(), []
    kind = "dry lease" if summary.get("dry") is not False else "lease"
    for index, run in enumerate(summary.get("runs", [])):
        row, why = clean_run(run, models)
        if row is None:
            left_out.append(f"run {index}: {why}")
            continue
        identity = (row["variant"], row["model"], row["epochs"], row["seed"])
        if identity in seen:
            left_out.append(f"run {index}: seed {row['seed']} of {row['model']} again")
            continue
        seen.add(identity)
        groups[row["variant"]].append({**row, "device": device, "run_dir": f"lease:{index}"})
    rows = []
    for variant, runs in groups.items():
        for row in aggregate(runs):
            row["recipe"] += f", {variant}" if variant else ""
            row["kind"] = kind  # a lease's row replaces only a lease's row (fmnist.analysis.results)
            rows.append(row)
    return rows, left_out


SPEED_NUMBERS = {
    **{k: (0.0, 1.0) for k in ("tier", "acc_tta", "acc_tta_std", "acc_plain", "acc_plain_std", "at_target")},
    **{
        k: (0.0, 1e7)
        for k in (
            "train_seconds",
            "train_seconds_std",
            "train_seconds_median",
            "first_seed_train_seconds",
            "plain_seconds",
            "test_seconds_tta",
            "wall_seconds",
        )
    },
    "lightning_over_plain": (0.0, 100.0),
}


def speedrun_rows(summary: dict) -> tuple[list[dict], list[str]]:
    """The completed speedrun tiers, their keys checked; and a line for each left out."""
    experiments = {p.stem for p in (Path(CONF_DIR) / "experiment").glob("speedrun*.yaml")}
    rows, left_out, device = [], [], device_label(summary)
    for index, row in enumerate(summary.get("speedrun", [])):
        if (
            row.get("status") != "completed"
            or not isinstance(row.get("experiment"), str)
            or row["experiment"] not in experiments
        ):
            left_out.append(f"speedrun {index}: not a completed tier of fmnist/conf/experiment")
            continue
        if (
            not all(_integer(row.get(k), 1, 10_000) for k in ("seeds", "wanted_seeds"))
            or row["seeds"] > row["wanted_seeds"]
        ):
            left_out.append(f"speedrun {index}: seeds out of range")
            continue
        bad = [k for k, (low, high) in SPEED_NUMBERS.items() if k in row and not _number(row[k], low, high)]
        if bad:
            left_out.append(f"speedrun {index}: {bad[0]} out of range")
            continue
        clean = {k: row[k] for k in SPEED_NUMBERS if k in row}
        clean.update(experiment=row["experiment"], seeds=row["seeds"], wanted_seeds=row["wanted_seeds"])
        clean["device"] = device
        rows.append(clean)
    return rows, left_out


def speedrun_table(rows: dict) -> str:
    """Markdown of the speedrun rows measured on leases."""
    lines = [
        "| tier | device | training time, median (mean ± std) | first seed (warm-up) | test accuracy, flip TTA | "
        "plain | seeds at target | seeds | Lightning / plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for row in rows.values():
        lines.append(
            f"| {row['experiment']} | {row['device']} | {fmt(row.get('train_seconds_median'), '.2f')} s "
            f"({fmt(row.get('train_seconds'), '.2f')} ± {fmt(row.get('train_seconds_std'), '.2f')}) | "
            f"{fmt(row.get('first_seed_train_seconds'), '.2f')} s | {fmt(row.get('acc_tta'), '.4f')} ± "
            f"{fmt(row.get('acc_tta_std'), '.4f')} | {fmt(row.get('acc_plain'), '.4f')} | "
            f"{fmt(row.get('at_target'), '.0%')} | {row['seeds']} of {row['wanted_seeds']} | "
            f"{fmt(row.get('lightning_over_plain'), '.3f')} |"
        )
    return "\n".join(lines)


def import_lease(path: Path, docs: Path) -> tuple[list[dict], list[dict], list[str]]:
    """Write the lease's rows into `docs`; (training rows, speedrun rows, a line per row left out)."""
    summary = read_summary(path)
    rows, left_out = training_rows(summary)
    speed, left = speedrun_rows(summary)
    if rows:
        write_results(rows, docs)
    if speed:
        store = docs / "speedrun_gpu.json"
        try:
            earlier = json.loads(store.read_text()) if store.is_file() else {}
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise FmnistError(f"{store} cannot be read ({error}): fix or remove it") from None
        if not isinstance(earlier, dict) or not all(
            isinstance(r, dict) and "experiment" in r for r in earlier.values()
        ):
            raise FmnistError(f"{store} is not a file of fmnist.reproduce --import-lease: fix or remove it")
        for row in speed:
            earlier[f"{row['experiment']} on {row['device']}"] = row
        write_atomically(store, (json.dumps(earlier, indent=2) + "\n").encode())
        write_section(docs / "SPEEDRUN.md", "lease", speedrun_table(earlier), "Speedrun")
    return rows, speed, left_out + left
