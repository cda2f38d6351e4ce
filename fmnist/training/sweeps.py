"""Multirun bookkeeping: `sweep_summary.md` / `.csv` in every multirun folder, and failed jobs that do
not end the sweep.

Hydra's sweepers re-raise a job's exception as soon as the launcher hands back its batch, which skips
`on_multirun_end`: no summary of the end, no comparison, a traceback. So in a multirun fmnist.train's
entry point catches the error and returns a `FailedJob` instead. Hydra then records the job as
completed: this callback reads the real status from the return value.

Each finished job leaves `job_status.json` in its folder and the summary is rebuilt from all of them
under a file lock (jobs may finish in parallel processes: joblib, submitit). When the sweep ends (or a job
is interrupted by Ctrl-C / SIGTERM, which stops it) the summary also lists the jobs that never ran, the
comparison is written when asked for (`experiment=compare`), and if any job did not complete the command
ends with one `error: ...` line and a non-zero status.
"""

from __future__ import annotations

import csv
import fcntl
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from fmnist.analysis.runs import read_json
from fmnist.utils.config import compose_run, hydra_value
from fmnist.utils.errors import FmnistError
from fmnist.utils.files import open_lock, write_json, write_text

SUMMARY_METRICS = ("val/acc_best", "test/acc", "test/macro_f1", "epochs", "train_seconds", "device")
BASIC_SWEEPER = f"{BasicSweeper.__module__}.{BasicSweeper.__name__}"
BASIC_LAUNCHER = f"{BasicLauncher.__module__}.{BasicLauncher.__name__}"


@dataclass(frozen=True)
class FailedJob:
    """What a multirun job returns when it failed or was interrupted (never a number, see the module)."""

    status: str  # FAILED or INTERRUPTED
    error: str  # one line

    @classmethod
    def of(cls, error: BaseException, status: str = "FAILED") -> FailedJob:
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return cls(status, f"{type(error).__name__}: {text}"[:300])

    def __str__(self) -> str:
        return f"{self.status.lower()}: {self.error}"


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of each job of a basic-sweeper multirun, in job order; None when not known in advance
    (another sweeper's; glob() sweeps need Hydra's config loader)."""
    if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
        return None
    params = [f"{key}={value}" for key, value in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    try:
        overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
        return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    except (HydraException, ValueError):
        return None


def job_rows(sweep_dir: Path, plan: list[list[str]] | None = None) -> list[dict[str, Any]]:
    """One row per job folder holding job_status.json, plus one per planned job that has none, in job order."""
    rows = []
    for status_file in sweep_dir.rglob("job_status.json"):
        status, problem = read_json(status_file)
        if not isinstance(status, dict):  # the job number from its folder's name (hydra.sweep.subdir starts with it)
            number = re.match(r"\d+", status_file.parent.name)
            status = {
                "job": int(number.group()) if number else "?",
                "status": "UNKNOWN",
                "overrides": [],
                "error": f"job_status.json {problem or 'is not a JSON object'}",
            }
        metrics, _ = read_json(status_file.parent / "metrics.json")
        metrics = metrics if isinstance(metrics, dict) else {}
        rows.append(
            {
                "job": status.get("job", "?"),
                "status": status.get("status", "UNKNOWN"),
                "overrides": " ".join(map(str, status.get("overrides") or [])),
                **{k: metrics.get(k, "") for k in SUMMARY_METRICS},
                "error": status.get("error", ""),
                "dir": str(status_file.parent.relative_to(sweep_dir)),
            }
        )
    ran = {row["job"] for row in rows}
    rows += [
        {
            "job": number,
            "status": "NOT_RUN",
            "overrides": " ".join(overrides),
            **dict.fromkeys(SUMMARY_METRICS, ""),
            "error": "never started: the sweep stopped before it",
            "dir": "",
        }
        for number, overrides in enumerate(plan or [])
        if number not in ran
    ]
    return sorted(rows, key=lambda r: (str(r["job"]).zfill(6), r["dir"]))


def _cell(value: Any) -> str:
    """A Markdown table cell shown as itself: one line, `|` escaped, and no raw HTML from names or overrides."""
    if isinstance(value, float):
        return f"{value:.4f}"
    text = " ".join(str(value).split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|")


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many jobs completed, failed, were interrupted and never ran."""
    statuses = [r["status"] for r in rows]
    result = {name: statuses.count(name.upper().replace(" ", "_")) for name in ("completed", "interrupted", "not run")}
    result["failed"] = len(rows) - sum(result.values())
    return result


def write_summary(sweep_dir: Path, plan: list[list[str]] | None = None) -> list[dict[str, Any]]:
    """Rewrite sweep_summary.md and .csv from the job folders (and, given the plan, the jobs not run); return the
    rows."""
    rows = job_rows(sweep_dir, plan)
    if not rows:
        return rows
    columns = list(rows[0])
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(sweep_dir / "sweep_summary.csv", table.getvalue())
    n = counts(rows)
    title = f"# Sweep summary: {n['completed']} completed, {n['failed']} failed" + "".join(
        f", {n[name]} {name}" for name in ("interrupted", "not run") if n[name]
    )
    lines = [title, "", "| " + " | ".join(c for c in columns if c != "error") + " |", "|" + "---|" * (len(columns) - 1)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns if c != "error") + " |" for r in rows]
    others = [r for r in rows if r["status"] != "COMPLETED"]
    if others:
        lines += ["", "## Jobs that did not complete", ""]
        lines += [
            f"- job {r['job']} ({_cell(r['overrides'])}), {r['status'].lower().replace('_', ' ')}: {_cell(r['error'])}"
            for r in others
        ]
    write_text(sweep_dir / "sweep_summary.md", "\n".join(lines) + "\n")
    return rows


def test_best(config: DictConfig, sweep_dir: Path) -> dict | None:
    """Test, once, the best job of a sweep whose jobs were not tested (`test_best=true`): the job with the
    highest val/acc_best, its best checkpoint, on the test split; the reports go to its `eval/`.
    Returns that evaluation's metrics (None when no job has a checkpoint to test)."""
    best: tuple[float, Path] | None = None
    for metrics_file in sweep_dir.rglob("metrics.json"):
        metrics, _ = read_json(metrics_file)
        if not isinstance(metrics, dict) or metrics.get("status") != "completed":
            continue
        value, checkpoint = metrics.get("val/acc_best"), metrics.get("best_checkpoint")
        has_checkpoint = isinstance(checkpoint, str) and checkpoint
        if isinstance(value, float) and has_checkpoint and (best is None or value > best[0]):
            best = (value, metrics_file.parent)
    if best is None:
        print("no job of the sweep has a best checkpoint to test")
        return None
    return test_once(config.data, best[1], f"best job: {best[1].relative_to(sweep_dir)} (val/acc_best {best[0]:.4f})")


def test_once(data_cfg: DictConfig, run_dir: Path, label: str) -> dict | None:
    """Test an untested run's best checkpoint (its metrics.json's `best_checkpoint`) on the test split, with
    `fmnist.evaluate` (reports in `eval/` beside the checkpoint); print one line; return the metrics."""
    from fmnist.analysis.evaluate import evaluate

    metrics, _ = read_json(run_dir / "metrics.json")
    checkpoint = metrics.get("best_checkpoint") if isinstance(metrics, dict) else None
    if not isinstance(checkpoint, str) or not checkpoint:
        print(f"not testing {run_dir}: its metrics.json names no best checkpoint")
        return None
    ckpt = run_dir / checkpoint
    if run_dir.resolve() not in ckpt.resolve().parents:  # metrics.json is a file: its path stays in the run
        print(f"not testing {run_dir}: its best_checkpoint {checkpoint} is outside its folder")
        return None
    data = OmegaConf.to_container(data_cfg, resolve=True)
    data.update(eval_batch_size=1000, device_resident=False, batches_per_step=1)
    cfg, _ = compose_run([f"ckpt_path={hydra_value(str(ckpt))}", "overwrite=true"], "evaluate")  # every key, defaulted
    with open_dict(cfg):
        cfg.data = OmegaConf.create(data)  # the run's own data settings
    result = evaluate(cfg)
    print(f"{label}, tested once: test/acc {result['test/acc']:.4f} ({ckpt.parent / 'eval'})")
    return result


class SweepSummary(Callback):
    """Writes job_status.json after each job, refreshes the sweep's summary files, and ends the sweep as the
    module says. With `compare=True` it also writes `fmnist.compare`'s report into the sweep folder."""

    def __init__(self, compare: bool = False):
        self.compare = compare
        self.plan: list[list[str]] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        self.plan = planned_jobs(config)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode is None or str(config.hydra.mode) != "RunMode.MULTIRUN":
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        status = {
            "job": config.hydra.job.num,
            "status": job_return.status.name,
            "overrides": list(job_return.overrides or []),
        }
        result = job_return._return_value  # the property would re-raise a failed job's error
        if isinstance(result, FailedJob):
            status.update(status=result.status, error=result.error)
        elif job_return.status == JobStatus.FAILED:
            status["error"] = FailedJob.of(result).error
        write_json(job_dir / "job_status.json", status)
        sweep_dir = Path(config.hydra.sweep.dir)
        with open_lock(sweep_dir / ".summary.lock") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            write_summary(sweep_dir)
        # Ctrl-C stops the sweep, after its summary. Other launchers run jobs in worker processes: there the
        # launcher's own process is interrupted too, and the job only records its state.
        if status["status"] == "INTERRUPTED" and OmegaConf.select(config, "hydra.launcher._target_") == BASIC_LAUNCHER:
            self.finish(sweep_dir, interrupted=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("test_best"):
            test_best(config, Path(config.hydra.sweep.dir))
        self.finish(Path(config.hydra.sweep.dir))

    def finish(self, sweep_dir: Path, interrupted: bool = False) -> None:
        """The final summary (with the jobs that never ran) and comparison; SystemExit with one line if any job
        did not complete."""
        with open_lock(sweep_dir / ".summary.lock") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            rows = write_summary(sweep_dir, self.plan)
        summary = sweep_dir / "sweep_summary.md"
        if rows:
            print(f"sweep summary: {summary}")
        problem = ""
        if self.compare:
            from fmnist.analysis.compare import compare

            not_run = [
                [f"job {r['job']}", "?", "?", "not run", f"never started: {r['overrides']}"]
                for r in rows
                if r["status"] == "NOT_RUN"
            ]
            try:
                compare([str(sweep_dir)], not_run=not_run, overwrite=True)  # the sweep's own report, rewritten
            except (FmnistError, OSError) as error:
                problem = f"; no comparison: {error}"
        n = counts(rows)
        if interrupted:
            raise SystemExit(
                f"error: the sweep was interrupted: {n['completed']} of {len(rows)} jobs completed, "
                f"{n['failed']} failed, {n['interrupted']} interrupted, {n['not run']} not run: see "
                f"{summary}{problem}"
            )
        if len(rows) > n["completed"]:
            never = f" ({n['not run']} never ran)" if n["not run"] else ""
            raise SystemExit(
                f"error: {len(rows) - n['completed']} of {len(rows)} jobs failed{never}: see {summary}{problem}"
            )
        if problem:
            raise SystemExit(f"error: {problem[2:]}")
