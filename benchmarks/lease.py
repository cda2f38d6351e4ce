"""Every GPU measurement in one command, sized to a lease: run by `bash benchmarks/lease.sh [TIER ...]`.

Tiers run in the order given (default: beyond speedrun study tf32), each sized to its share of BUDGET
seconds (counted from lease.sh's start, LEASE_START) before it starts: by epochs for training tiers (every
run keeps its recipe's schedule, scaled to the epochs it gets), by seeds for speedrun tiers. Its plan says
so when that is less than the full recipe; a tier that cannot run one epoch is skipped with a line. No run
is cut by a time guard. Two kills are a last resort: a run still going at twice its plan plus 30 s (hung),
and every run still going 20 s past the budget (so that the command ends, its files written, inside the
device tool's limit); its row then says `killed (hung)` or `killed (deadline)`.

Results come back whole and early. $OUT holds only `summary.json` (one row per run, rewritten after each
run), `results.tar.gz` (every metrics.json, log and JSON so far, rewritten after each tier) and `lease.log`.
Run folders live in $WORK. With DRY=1 the same plumbing runs on the CPU with tiny settings (not a measurement:
the summary says so). docs/GPU.md has the whole story.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fmnist.analysis.results import recipe_epochs  # noqa: E402
from fmnist.utils.files import write_atomically  # noqa: E402

PY = sys.executable
GRACE_SECONDS = 20.0  # past the budget, runs still going are killed and the files written
START_SECONDS = 25.0  # one training process's own cost on the GPU machine: imports, data, cuDNN, graph capture
# Seconds per training epoch of one run alone on one H100/H200. Measured: cnn, rnn, bilstm on trainer=gpu_fast
# (docs/BENCHMARKS.md, H200). The others are estimates until a lease measures them (docs/GPU.md).
EPOCH_SECONDS = {"cnn": 0.70, "rnn": 0.42, "bilstm": 1.44, "lstm": 1.0, "gru": 1.0, "attention": 3.0, "resnet": 5.0}
# Seconds per seed of a speedrun tier on gpu_fast (estimates), and the seeds the tier wants.
SPEEDRUN = {"speedrun": (3.0, 20), "speedrun_94": (4.0, 10), "speedrun_95": (30.0, 3)}
DEFAULT_TIERS = ("beyond", "speedrun", "study", "tf32")
DRY_TRAIN = [
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
]
DRY_FAST = ["trainer.limit_train_batches=1", "data.batches_per_step=2"]
DRY_LOOP = ["trainer.limit_train_batches=2"]


@dataclass
class Lease:
    """Where the lease writes, what it may spend, and what it found out on the way."""

    out: Path
    work: Path
    data: str
    budget: float
    dry: bool
    started: float = field(default_factory=time.time)  # wall clock: lease.sh's start, passed as LEASE_START
    parallel: int = 1  # runs at once on the GPU, from the concurrency tier (1 until it measured otherwise)
    mps: bool = False
    epoch_slowdown: float = 1.0  # an epoch's time with `parallel` runs at once over its time alone
    rows: list = field(default_factory=list)
    speedrun: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    header: dict = field(default_factory=dict)

    def left(self) -> float:
        return self.budget - (time.time() - self.started)

    def deadline_left(self) -> float:
        return self.left() + GRACE_SECONDS

    def log(self, line: str) -> None:
        stamp = f"[{time.time() - self.started:6.1f} s] "
        print(stamp + line, flush=True)
        with open(self.out / "lease.log", "a") as log:
            log.write(stamp + line + "\n")

    def threads(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.parallel)

    def write_summary(self) -> None:
        summary = {**self.header, "parallel": self.parallel, "mps": self.mps, "epoch_slowdown": self.epoch_slowdown}
        summary["notes"] = self.notes
        summary.update(runs=self.rows, speedrun=self.speedrun)
        write_atomically(self.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())

    def write_tarball(self) -> None:
        """results.tar.gz: the summary, every run's metrics.json and log, every JSON the tiers wrote."""
        buffer = io.BytesIO()
        # GNU format: a short name has no extended header before it, so the summary is the first 512-byte header,
        # where fmnist.reproduce --import-lease reads it
        with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
            data = (self.out / "summary.json").read_bytes()
            info = tarfile.TarInfo("summary.json")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
            for path in sorted(self.work.rglob("*")):
                if path.is_file() and (path.suffix in (".json", ".log") or path.name == "train.log"):
                    tar.add(path, arcname=str(path.relative_to(self.work)))
        write_atomically(self.out / "results.tar.gz", buffer.getvalue())


def _shell(command: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in command)


HUNG, DEADLINE = -9, -10  # run_process's codes for a run it killed


def run_process(lease: Lease, name: str, command: list[str], planned: float) -> int:
    """One process with its log in WORK/logs/<name>.log; killed only well past its plan (a hung run) or past
    the budget's grace (the deadline)."""
    hung = max(60.0, 2 * planned + 30)
    limit = max(1.0, min(hung, lease.deadline_left()))
    log_path = lease.work / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write(f"+ {_shell(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            return process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            why = "hung" if limit >= hung else "deadline"
            log.write(f"lease: killed ({why}) after {limit:.0f} s (planned {planned:.0f} s)\n")
            return HUNG if why == "hung" else DEADLINE


# --- training runs -------------------------------------------------------------------------------------------


@dataclass
class Run:
    model: str
    trainer: str
    seed: int
    epochs: int
    extra: tuple = ()
    label: str = ""  # a recipe variant the row names, e.g. "tf32"

    @property
    def name(self) -> str:
        return f"{self.model}{'-' + self.label if self.label else ''}-{self.seed}"


def train_command(lease: Lease, run: Run, folder: Path) -> list[str]:
    """`python -m fmnist.train` for one run, its data from DATA, its folder in WORK."""
    trainer = run.trainer
    dry = []
    if lease.dry:
        trainer = "cpu_fast" if trainer.endswith("_fast") else "cpu"
        dry = DRY_TRAIN + (DRY_FAST if trainer == "cpu_fast" else DRY_LOOP)
    return [
        PY,
        "-m",
        "fmnist.train",
        f"model={run.model}",
        f"trainer={trainer}",
        f"seed={run.seed}",
        f"trainer.max_epochs={run.epochs}",
        f"torch_threads={lease.threads()}",
        f"data.search_dirs=[{lease.data}]",
        f"data.root={lease.work / 'data'}",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={folder}",
        *run.extra,
        *dry,
    ]


def row_of(lease: Lease, run: Run, folder: Path, code: int, wall: float) -> dict:
    """The summary's row of a finished run: its metrics.json's figures, or why there are none."""
    keep = (
        "model",
        "seed",
        "epochs",
        "test/acc",
        "test/acc_tta",
        "test/macro_f1",
        "val/acc_best",
        "train_seconds",
        "device",
        "optimizer",
        "batch_size",
        "params_total_keras",
        "status",
    )
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    row = {k: metrics[k] for k in keep if k in metrics}
    row.update(model=run.model, trainer=run.trainer, seed=run.seed, wall_seconds=round(wall, 1))
    row.update(parallel=lease.parallel, mps=lease.mps, epoch_seconds=metrics.get("epoch_seconds"))
    row["recipe"] = run.label or "recipe"
    row["recipe_epochs"] = recipe_epochs(run.model)
    row["epochs"] = metrics.get("epochs", run.epochs)
    if code in (HUNG, DEADLINE):
        row["status"] = "killed (hung)" if code == HUNG else "killed (deadline)"
    elif code != 0 or "test/acc" not in metrics:
        row["status"] = metrics.get("status") if metrics.get("status") == "diverged" else f"failed (exit {code})"
    return row


def run_seconds(lease: Lease, run: Run, epochs: int | None = None, alone: bool = False) -> float:
    """A run's planned seconds: its start plus its epochs, slowed as `parallel` runs at once measured (unless
    it runs `alone`)."""
    epochs = run.epochs if epochs is None else epochs
    return START_SECONDS + epochs * EPOCH_SECONDS[run.model] * (1.0 if alone else lease.epoch_slowdown)


def tier_seconds(lease: Lease, runs: list[Run], epochs: list[int]) -> float:
    """The tier's planned wall time: the runs, longest first, each into the least loaded of its lanes."""
    lanes = [0.0] * max(1, min(lease.parallel, len(runs)))
    for seconds in sorted((run_seconds(lease, r, e) for r, e in zip(runs, epochs, strict=True)), reverse=True):
        lanes[lanes.index(min(lanes))] += seconds
    return max(lanes)


def plan_epochs(lease: Lease, runs: list[Run], share: float) -> float:
    """Scale the runs' epochs (the same fraction of each recipe) so the tier fits `share` seconds; the planned
    seconds, or 0.0 when not one epoch of each fits (the runs are then left as they were)."""

    def epochs(fraction: float) -> list[int]:
        return [max(1, math.floor(r.epochs * fraction)) for r in runs]

    fraction = 1.0
    while fraction > 0.01 and tier_seconds(lease, runs, epochs(fraction)) > share:
        fraction *= 0.95
    planned = epochs(fraction)
    if tier_seconds(lease, runs, planned) > share:
        return 0.0
    for run, count in zip(runs, planned, strict=True):
        run.epochs = count
    return tier_seconds(lease, runs, planned)


def training_tier(lease: Lease, tier: str, runs: list[Run], share: float) -> None:
    """Plan, announce and run a tier's training runs, `lease.parallel` at a time; a row per run."""
    wanted = {r.name: r.epochs for r in runs}
    planned = plan_epochs(lease, runs, share)
    if planned == 0.0:
        lease.log(f"{tier}: skipped: not one epoch of each run fits the {share:.0f} s left")
        lease.notes.append(f"{tier}: skipped (budget)")
        return
    for model in dict.fromkeys(r.model for r in runs):
        mine = [r for r in runs if r.model == model]
        full = wanted[mine[0].name]
        how = "full recipe" if mine[0].epochs >= full else f"REDUCED to {mine[0].epochs} of {full} epochs (budget)"
        dry = " (DRY: on the CPU, 1 epoch of tiny batches)" if lease.dry else ""
        lease.log(f"{tier}: {model} x {len(mine)} seeds on {mine[0].trainer}, {mine[0].epochs} epochs: {how}{dry}")
    lease.log(f"{tier}: planned {planned:.0f} s of {share:.0f} s, {min(lease.parallel, len(runs))} at a time")

    def one(run: Run) -> dict:
        folder = lease.work / "runs" / tier / run.name
        start = time.monotonic()
        code = run_process(lease, f"{tier}-{run.name}", train_command(lease, run, folder), run_seconds(lease, run))
        row = row_of(lease, run, folder, code, time.monotonic() - start)
        row["tier"] = tier
        return row

    order = sorted(runs, key=lambda r: -run_seconds(lease, r))  # the longest first
    with ThreadPoolExecutor(max(1, min(lease.parallel, len(runs)))) as pool:
        for row in pool.map(one, order):
            lease.rows.append(row)
            acc = row.get("test/acc")
            lease.log(
                f"{tier}: {row['model']} seed {row['seed']}: {row.get('status', 'completed')}, "
                f"test/acc {acc if acc is None else round(acc, 4)}, {row['epochs']} epochs, {row['wall_seconds']} s"
            )
            lease.write_summary()


def seeds_runs(models: tuple, trainers: dict, seeds: list[int], extra: tuple = (), label: str = "") -> list[Run]:
    return [Run(m, trainers.get(m, "gpu_fast"), s, recipe_epochs(m) or 1, extra, label) for m in models for s in seeds]


def tier_runs(tier: str, seeds: list[int]) -> list[Run]:
    """The runs of a training tier at their full recipes."""
    if tier == "beyond":  # resnet in bf16 on Lightning's loop, the rest on the fast path
        return seeds_runs(("resnet", "attention", "lstm", "gru"), {"resnet": "gpu_bf16"}, seeds)
    if tier == "study":
        return seeds_runs(("cnn", "rnn", "bilstm"), {}, seeds)
    return seeds_runs(("cnn",), {}, seeds[:1], ("tf32=true",), "tf32")  # tf32: one seed


# --- the tiers -----------------------------------------------------------------------------------------------


PROBE = ("rnn", 10)  # the concurrency probe: 10 epochs of the SimpleRNN (about 4 s of epochs on an H200)


def _mps(lease: Lease, command: str) -> bool:
    """Start (`-d`) or stop (`quit`) the MPS control daemon, each bounded; True if it did."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        return False
    try:
        if command == "-d":
            return subprocess.run([control, "-d"], timeout=20, check=False).returncode == 0
        subprocess.run([control], input="quit\n", text=True, timeout=20, check=False)
        for _ in range(20):  # the daemon exits after the command returns
            if not _mps_running():
                return True
            time.sleep(0.5)
    except subprocess.TimeoutExpired:
        lease.log(f"concurrency: nvidia-cuda-mps-control {command} did not answer within 20 s")
    return False


def _mps_running() -> bool:
    return subprocess.run(["pgrep", "-f", "nvidia-cuda-mps-control"], capture_output=True, check=False).returncode == 0


def concurrency(lease: Lease, share: float, seeds: list[int]) -> None:
    """1 probe run alone against 3 at once (and 3 under MPS where the machine has it): sets lease.parallel,
    lease.mps and lease.epoch_slowdown (an epoch's time 3 at a time over alone, from the runs' epoch_seconds)."""
    model, epochs = PROBE

    def batch(name: str, count: int, planned: float) -> tuple[float, float]:
        """(wall seconds per run, mean epoch seconds) of `count` probe runs at once; inf where one failed."""
        lease.parallel = count  # the threads each gets
        start = time.monotonic()

        def one(i: int) -> tuple[int, Path]:
            folder = lease.work / "probe" / name / str(i)
            command = train_command(lease, Run(model, "gpu_fast", i + 1, epochs), folder)
            return run_process(lease, f"concurrency-{name}-{i}", command, planned), folder

        with ThreadPoolExecutor(count) as pool:
            done = list(pool.map(one, range(count)))
        wall = time.monotonic() - start
        per_epoch = []
        for _, folder in done:
            try:
                seconds = json.loads((folder / "metrics.json").read_text())["epoch_seconds"]
                per_epoch += [float(x) for x in seconds[1:] or seconds]  # the first epoch is the warm-up
            except (OSError, ValueError, KeyError, TypeError):
                pass
        codes = [code for code, _ in done]
        ok = all(c == 0 for c in codes) and per_epoch
        lease.log(f"concurrency: {name}: {count} run(s) of {model} x {epochs} epochs in {wall:.1f} s, exits {codes}")
        return (wall / count, sum(per_epoch) / len(per_epoch)) if ok else (math.inf, math.inf)

    planned = run_seconds(lease, Run(model, "gpu_fast", 1, epochs), alone=True)
    figures = {"alone": batch("alone", 1, planned), "three": batch("three", 3, planned * 1.5)}
    if lease.dry:
        lease.log("concurrency: MPS not measured (DRY)")
    elif shutil.which("nvidia-cuda-mps-control") is None:
        lease.log("concurrency: MPS not measured (no nvidia-cuda-mps-control on this machine)")
    elif _mps_running():
        lease.log("concurrency: an MPS daemon was already running: every probe ran under it; MPS not measured apart")
    elif _mps(lease, "-d"):
        figures["three_mps"] = batch("three_mps", 3, planned * 1.5)
        _mps(lease, "quit")
    else:
        lease.log("concurrency: MPS could not be started (nvidia-cuda-mps-control -d failed)")
    if math.isfinite(figures["alone"][0]):
        best = min(figures, key=lambda k: figures[k][0])
    else:
        best = "alone"  # without the yardstick nothing is known to be faster: one at a time
    lease.mps = best == "three_mps" and _mps(lease, "-d")
    lease.parallel = 1 if best == "alone" or (best == "three_mps" and not lease.mps) else 3
    measured = figures[best][1] / figures["alone"][1] if lease.parallel > 1 else 1.0
    lease.epoch_slowdown = round(max(1.0, measured), 2)  # sharing never speeds an epoch up: below 1 is noise
    lease.header["concurrency"] = {
        k: {"wall_seconds_per_run": round(w, 2), "epoch_seconds": round(e, 3)} if math.isfinite(w) else None
        for k, (w, e) in figures.items()
    }
    lease.log(
        f"concurrency: later tiers run {lease.parallel} at a time{' under MPS' if lease.mps else ''}"
        f" (an epoch planned at {lease.epoch_slowdown}x its time alone; measured {measured:.2f}x)"
    )
    lease.write_summary()


def beyond(lease: Lease, share: float, seeds: list[int]) -> None:
    """The networks beyond the study at their recipes."""
    training_tier(lease, "beyond", tier_runs("beyond", seeds), share)


def study(lease: Lease, share: float, seeds: list[int]) -> None:
    """The study's three recipes on the fast path."""
    training_tier(lease, "study", tier_runs("study", seeds), share)


def tf32(lease: Lease, share: float, seeds: list[int]) -> None:
    """The study's CNN recipe with TF32 convolutions and matmuls."""
    training_tier(lease, "tf32", tier_runs("tf32", seeds), share)


def speedrun_seconds(per_seed: float, count: int) -> float:
    """A speedrun tier's planned seconds: its process's start, and per seed the run, its test and (for the 93%
    tier) its share of the plain loop, 1.3 times the seed's own time."""
    return START_SECONDS + count * per_seed * 1.3


def speedrun(lease: Lease, share: float, seeds: list[int]) -> None:
    """The speedrun tiers through benchmarks/speedrun.py, each with as many of its seeds as fit."""
    for experiment, (per_seed, wanted) in SPEEDRUN.items():
        want = len(seeds) if lease.dry else wanted
        left = min(share, lease.left())
        count = max(n for n in range(want + 1) if n == 0 or speedrun_seconds(per_seed, n) <= left)
        if count < 1:
            lease.log(f"speedrun: {experiment} skipped: not one seed fits the {max(left, 0.0):.0f} s left")
            lease.notes.append(f"speedrun {experiment}: skipped (budget)")
            continue
        how = "all its seeds" if count == want else f"REDUCED to {count} of {want} seeds (budget)"
        lease.log(f"speedrun: {experiment} x {count} seeds on gpu_fast: {how}")
        target = lease.work / "speedrun" / f"{experiment}.json"
        command = [
            PY,
            "benchmarks/speedrun.py",
            "--experiment",
            experiment,
            "--seeds",
            str(count),
            "--json",
            str(target),
        ]
        command += ["--trainer", "cpu_fast" if lease.dry else "gpu_fast", "-o", f"data.search_dirs=[{lease.data}]"]
        command += ["-o", f"data.root={lease.work / 'data'}", *(["--plain"] if experiment == "speedrun" else [])]
        if lease.dry:
            dry = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "data.batches_per_step=2"]
            command += [a for o in [*dry, "trainer.limit_val_batches=1"] for a in ("-o", o)]
        start = time.monotonic()
        code = run_process(lease, f"speedrun-{experiment}", command, speedrun_seconds(per_seed, count))
        try:
            figures = json.loads(target.read_text())
        except (OSError, ValueError):
            figures = {}
        keep = ("experiment", "trainer", "device", "torch", "tier", "acc_tta", "acc_tta_std", "acc_plain",
                "acc_plain_std", "at_target", "train_seconds", "train_seconds_std", "train_seconds_median",
                "first_seed_train_seconds", "plain_seconds", "lightning_over_plain", "test_seconds_tta")  # fmt: skip
        row = {k: figures[k] for k in keep if k in figures}
        row.update(experiment=experiment, seeds=len(figures.get("seeds", [])), wanted_seeds=want)
        row.update(status="completed" if code == 0 and figures else f"failed (exit {code})")
        row["wall_seconds"] = round(time.monotonic() - start, 1)
        lease.speedrun.append(row)
        lease.log(f"speedrun: {experiment}: {row['status']}, tta {row.get('acc_tta')}, {row['wall_seconds']} s")
        lease.write_summary()


def profile(lease: Lease, share: float, seeds: list[int]) -> None:
    """benchmarks/gpu_profile.py: one step eager, graphed and in kernels (GPU only)."""
    if lease.dry:
        lease.log("profile: skipped in DRY (needs CUDA)")
        return
    target = lease.work / "profile.json"
    code = run_process(lease, "profile", [PY, "benchmarks/gpu_profile.py", "--json", str(target)], 90)
    lease.log(f"profile: exit {code}")


def bench(lease: Lease, share: float, seeds: list[int]) -> None:
    """benchmarks/bench.py: Lightning's default path, a plain loop and the fast path, 3 epochs each."""
    accelerator, images = ("cpu", 650) if lease.dry else ("gpu", 54000)
    command = [PY, "benchmarks/bench.py", "--accelerator", accelerator, "--paths", "lightning", "plain", "fast"]
    command += ["--images", str(images), "--reps", "1", "--epochs", "2" if lease.dry else "3"]
    command += ["--root", str(lease.work / "data"), "--out", str(lease.work / "BENCHMARKS.md")]
    code = run_process(lease, "bench", [*command, "--json", str(lease.work / "bench.json")], 150)
    lease.log(f"bench: exit {code}")


TIERS = {f.__name__: f for f in (concurrency, beyond, speedrun, study, tf32, profile, bench)}
# What each tier needs for its full plan, in seconds (its share is the least of this and what is left).
WISH = {
    "concurrency": 3 * START_SECONDS + 3 * PROBE[1] * EPOCH_SECONDS[PROBE[0]] * 1.5,
    "profile": 90.0,
    "bench": 150.0,
}


def wish(lease: Lease, tier: str, seeds: list[int]) -> float:
    """The seconds a tier's full plan needs: its runs one after the other, each alone, at their full recipes."""
    if tier in WISH:
        return WISH[tier]
    if tier == "speedrun":
        return sum(speedrun_seconds(per_seed, count) for per_seed, count in SPEEDRUN.values())
    return sum(run_seconds(lease, run, alone=True) for run in tier_runs(tier, seeds))


def seed_list(value: str) -> list[int]:
    """'1 2 3' or '1,2,3' as [1, 2, 3]."""
    try:
        seeds = [int(v) for v in value.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integer seeds: {value!r}") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"not a list of seeds >= 0: {value!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tiers", nargs="*", help=f"of {', '.join(TIERS)} (default: {' '.join(DEFAULT_TIERS)})")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all the tiers (default 480)")
    parser.add_argument("--seeds", type=seed_list, default=[1, 2, 3], help='one argument: "1 2 3" or "1,2,3"')
    parser.add_argument("--dry", action="store_true")
    args = parser.parse_args(argv)
    unknown = [t for t in args.tiers if t not in TIERS]
    if unknown:
        print(f"error: unknown tier {unknown[0]!r}: choose from {', '.join(TIERS)}", file=sys.stderr)
        return 2
    tiers = list(args.tiers or DEFAULT_TIERS)
    lease = Lease(args.out, args.work, args.data, args.budget, args.dry)
    lease.started = float(os.environ.get("LEASE_START", lease.started))
    concurrent = {"beyond", "study"} & set(tiers)
    # measured, not assumed, before the first tier that could run seeds at once, if that tier keeps a share
    if concurrent and "concurrency" not in tiers and lease.left() > WISH["concurrency"] + 120:
        tiers.insert(0, "concurrency")
    lease.header = lease_header(args.dry)
    from fmnist.data.idx import ensure_raw_files

    ensure_raw_files(lease.work / "data", [args.data])  # once, before runs that would each decompress it
    lease.log(
        f"lease: tiers {' '.join(tiers)}, budget {args.budget:.0f} s, seeds {args.seeds}{', DRY' if args.dry else ''}"
    )
    lease.write_summary()
    for tier in tiers:
        share = min(wish(lease, tier, args.seeds), lease.left())
        if share <= 0:
            lease.log(f"{tier}: skipped: the budget is spent")
            lease.notes.append(f"{tier}: skipped (budget spent)")
            continue
        start = time.monotonic()
        lease.log(f"{tier}: start, {share:.0f} s of {lease.left():.0f} s left")
        if tier in WISH and tier != "concurrency" and share < WISH[tier]:
            lease.log(f"{tier}: skipped: it needs about {WISH[tier]:.0f} s")
            lease.notes.append(f"{tier}: skipped (budget)")
            continue
        TIERS[tier](lease, share, args.seeds)
        lease.log(f"{tier}: done in {time.monotonic() - start:.0f} s")
        lease.write_summary()
        lease.write_tarball()
    if lease.mps:
        _mps(lease, "quit")
    lease.log(f"lease: done in {time.time() - lease.started:.0f} s; $OUT holds summary.json, results.tar.gz, lease.log")
    return 0


def lease_header(dry: bool) -> dict:
    """The machine and versions every row was measured with."""
    import lightning
    import torch

    gpu = (
        subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        if shutil.which("nvidia-smi")
        else None
    )
    return {
        "lease": 1,
        "dry": dry,
        "date": datetime.date.today().isoformat(),
        "gpu": gpu.stdout.strip() if gpu and gpu.returncode == 0 else None,
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    sys.exit(main())
