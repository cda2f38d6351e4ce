"""Hydra callback that keeps `sweep_summary.md` and `sweep_summary.csv` in every multirun folder.

Each finished job (completed or failed) leaves `job_status.json` in its folder and the summary is
rebuilt from all of them under a file lock, so it is complete even when a job fails (the sweeper
then stops with an error) or when jobs finish in parallel processes (joblib, submitit).
"""

from __future__ import annotations

import csv
import fcntl
import json
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SUMMARY_METRICS = ("val/acc_best", "test/acc", "test/macro_f1", "epochs", "train_seconds", "device")


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder holding job_status.json, in job order."""
    rows = []
    for status_file in sweep_dir.rglob("job_status.json"):
        status = json.loads(status_file.read_text())
        metrics_file = status_file.parent / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        rows.append({"job": status["job"], "status": status["status"], "overrides": " ".join(status["overrides"]),
                     **{k: metrics.get(k, "") for k in SUMMARY_METRICS}, "error": status.get("error", ""),
                     "dir": str(status_file.parent.relative_to(sweep_dir))})
    return sorted(rows, key=lambda r: (str(r["job"]).zfill(6), r["dir"]))


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value).replace("|", "\\|")


def write_summary(sweep_dir: Path) -> None:
    """Rewrite sweep_summary.md and .csv from the job folders."""
    rows = job_rows(sweep_dir)
    if not rows:
        return
    columns = list(rows[0])
    with open(sweep_dir / "sweep_summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    failed = [r for r in rows if r["status"] != "COMPLETED"]
    lines = [f"# Sweep summary: {len(rows) - len(failed)} completed, {len(failed)} failed", "",
             "| " + " | ".join(c for c in columns if c != "error") + " |", "|" + "---|" * (len(columns) - 1)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns if c != "error") + " |" for r in rows]
    if failed:
        lines += ["", "## Failed jobs", ""] + [f"- job {r['job']} ({r['overrides']}): {r['error']}" for r in failed]
    (sweep_dir / "sweep_summary.md").write_text("\n".join(lines) + "\n")


class SweepSummary(Callback):
    """Writes job_status.json after each job and refreshes the sweep's summary files.

    With `compare=True` it also writes `fmnist.compare`'s report into the sweep folder at the end.
    """

    def __init__(self, compare: bool = False):
        self.compare = compare

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Optuna's sqlite storage lives in the sweep folder, which must exist before the study opens.
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode is None or str(config.hydra.mode) != "RunMode.MULTIRUN":
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        status = {"job": config.hydra.job.num, "status": job_return.status.name,
                  "overrides": list(job_return.overrides or [])}
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value
            status["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        (job_dir / "job_status.json").write_text(json.dumps(status, indent=2) + "\n")
        sweep_dir = Path(config.hydra.sweep.dir)
        with open(sweep_dir / ".summary.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            write_summary(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        write_summary(sweep_dir)
        if (sweep_dir / "sweep_summary.md").exists():
            print(f"sweep summary: {sweep_dir / 'sweep_summary.md'}")
        if self.compare:
            from fmnist.compare import compare
            compare([str(sweep_dir)])
