"""Rows measured on a GPU lease (`benchmarks/lease.sh`) into the docs: `fmnist.reproduce --import-lease FILE`.

FILE is the lease's `summary.json` or its `results.tar.gz` (whose `summary.json` is read; nothing is
extracted to disk). The training rows go into docs/RESULTS.md and docs/results.json (a row replaces the
row of the same model, epochs and recipe); the speedrun rows into docs/speedrun_gpu.json and the `lease`
section of docs/SPEEDRUN.md (a row replaces the row of the same tier and device). Each row names the
GPU, the torch version and the lease's date.
"""

from __future__ import annotations

import json
import math
import tarfile
from collections import defaultdict
from pathlib import Path

from fmnist.analysis.results import write_results
from fmnist.analysis.runs import aggregate, metrics_state
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import write_section

MAX_SUMMARY = 16 * 2**20  # the GPU machine returns files of at most 16 MiB
MAX_MEMBERS = 10_000


def read_summary(path: Path) -> dict:
    """The lease's summary, from summary.json or from the tarball's summary.json member, bounded in size."""
    if not path.is_file():
        raise FmnistError(f"--import-lease={path}: not a file (give the lease's summary.json or results.tar.gz)")
    if tarfile.is_tarfile(path):
        with tarfile.open(path, "r|*") as tar:  # a stream: members are read one by one, nothing is extracted
            for count, member in enumerate(tar):
                if count > MAX_MEMBERS:
                    break
                if member.name == "summary.json" and member.isreg():
                    if member.size > MAX_SUMMARY:
                        raise FmnistError(f"--import-lease={path}: its summary.json is over 16 MiB")
                    data = tar.extractfile(member).read(MAX_SUMMARY + 1)
                    break
            else:
                raise FmnistError(f"--import-lease={path}: the tarball holds no summary.json")
    else:
        if path.stat().st_size > MAX_SUMMARY:
            raise FmnistError(f"--import-lease={path}: over 16 MiB, not a lease's summary.json")
        data = path.read_bytes()
    try:
        summary = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FmnistError(f"--import-lease={path}: summary.json is not valid JSON ({error})") from None
    if not isinstance(summary, dict) or summary.get("lease") != 1:
        raise FmnistError(f"--import-lease={path}: not a summary of benchmarks/lease.sh")
    for key in ("runs", "speedrun"):
        if not isinstance(summary.get(key, []), list) or not all(isinstance(r, dict) for r in summary.get(key, [])):
            raise FmnistError(f"--import-lease={path}: its {key!r} is not a list of rows")
    return summary


def device_label(summary: dict) -> str:
    """'NVIDIA H200, driver 580.159.03, torch 2.11.0, lease 2026-12-02' (a dry run says it is not a measurement)."""
    gpu = str(summary.get("gpu") or "").split(",")
    driver = f", driver {gpu[1].strip()}" if len(gpu) > 1 else ""
    label = f"{str(summary.get('device', '?'))[:60]}{driver}, torch {str(summary.get('torch', '?'))[:20]}"
    label += f", lease {str(summary.get('date', '?'))[:10]}"
    return label + (" (DRY run: tiny settings, not a measurement)" if summary.get("dry") else "")


def training_rows(summary: dict) -> list[dict]:
    """The completed training runs aggregated over seeds, as fmnist.reproduce's rows; a variant (tf32) apart."""
    device = device_label(summary)
    groups = defaultdict(list)
    for index, run in enumerate(summary.get("runs", [])):
        if run.get("status", "completed") != "completed" or metrics_state(run)[0] != "completed":
            continue
        label = run.get("recipe") if run.get("recipe") not in (None, "recipe") else ""
        groups[str(label)[:20]].append({**run, "device": device, "run_dir": f"lease:{index}"})
    rows = []
    for label, runs in groups.items():
        for row in aggregate(runs):
            row["recipe"] += f", {label}" if label else ""
            rows.append(row)
    return rows


def _number(row: dict, key: str) -> float | None:
    value = row.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


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


def import_lease(path: Path, docs: Path) -> tuple[list[dict], list[dict]]:
    """Write the lease's rows into `docs`; (training rows, speedrun rows) written."""
    summary = read_summary(path)
    rows = training_rows(summary)
    if rows:
        write_results(rows, docs)
    device = device_label(summary)
    speed = []
    for row in summary.get("speedrun", []):
        if row.get("status") != "completed" or not isinstance(row.get("experiment"), str):
            continue
        clean = {k: _number(row, k) for k in row if _number(row, k) is not None}
        clean.update(experiment=row["experiment"][:40], device=device)
        clean["seeds"], clean["wanted_seeds"] = int(clean.get("seeds", 0)), int(clean.get("wanted_seeds", 0))
        speed.append(clean)
    if speed:
        store = docs / "speedrun_gpu.json"
        try:
            earlier = json.loads(store.read_text()) if store.is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise FmnistError(f"{store} cannot be read ({error}): fix or remove it") from None
        if not isinstance(earlier, dict) or not all(
            isinstance(r, dict) and "experiment" in r for r in earlier.values()
        ):
            raise FmnistError(f"{store} is not a file of fmnist.reproduce --import-lease: fix or remove it")
        for row in speed:
            earlier[f"{row['experiment']} on {row['device']}"] = row
        store.write_text(json.dumps(earlier, indent=2) + "\n")
        write_section(docs / "SPEEDRUN.md", "lease", speedrun_table(earlier), "Speedrun")
    return rows, speed
