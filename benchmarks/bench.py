"""Framework overhead: the project's Lightning epoch against a plain PyTorch loop, side by side.

    python benchmarks/bench.py [--models cnn rnn bilstm] [--reps 3] [--epochs 3] [--images 6000]
    python benchmarks/bench.py --paths lightning plain keras   # also the study's Keras models (.venv-keras)
    python benchmarks/bench.py --accelerator gpu --paths lightning plain fast --images 54000 --reps 1

For each model, repetitions alternate the two paths on the same slice of training images, same
batch size, network and optimizer. Each figure is the median epoch time of a run (its first
epoch, the warm-up, left out); the table shows the median over repetitions and the ratios (median of
each repetition's ratio). Writes docs/BENCHMARKS.md (a section per accelerator).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import hydra
import lightning
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.plain_loop import plain_epoch_seconds  # noqa: E402
from fmnist.data.datamodule import FashionMNISTDataModule  # noqa: E402
from fmnist.training.fit import train  # noqa: E402
from fmnist.utils.config import compose_config  # noqa: E402
from fmnist.utils.files import write_section  # noqa: E402

LAST_LOSSES: dict[str, dict[str, float]] = {}  # final train/loss of each path, a check that both learn alike


def lightning_epoch_seconds(
    model: str, steps: int, epochs: int, root: str, accelerator: str, fast: bool = False
) -> list[float]:
    """The project's own path: `fmnist.train` with its default callbacks, logger and progress bar;
    with `fast`, trainer=gpu_fast or cpu_fast (all `steps` batches of an epoch in one chunk)."""
    trainer = (
        [f"trainer={accelerator}_fast", f"data.batches_per_step={steps}", "trainer.limit_train_batches=1"]
        if fast
        else [f"trainer.limit_train_batches={steps}"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(
            [
                f"model={model}",
                f"data.root={root}",
                f"output_dir={tmp}",
                f"trainer.max_epochs={epochs}",
                *trainer,
                f"trainer.accelerator={accelerator}",
                "trainer.limit_val_batches=1",
                "test=false",
                "trainer.num_sanity_val_steps=0",
            ]
        )
        metrics = train(cfg)
        LAST_LOSSES.setdefault(model, {})["fast" if fast else "lightning"] = metrics["train/loss"]
        return metrics["epoch_seconds"]


def plain_seconds(model: str, steps: int, epochs: int, root: str, images, labels, device: str) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([f"model={model}", f"data.root={root}", f"output_dir={tmp}"])
    torch.set_flush_denormal(cfg.flush_denormal)  # the project's CPU setting, for both paths
    module = hydra.utils.instantiate(cfg.model).to(device)
    return plain_epoch_seconds(
        module,
        module.configure_optimizers(),
        images.to(device),
        labels.to(device),
        cfg.data.batch_size,
        steps,
        epochs,
        device=device,
    )


def keras_seconds(model: str, steps: int, epochs: int, python: Path) -> list[float]:
    """The study's Keras model, timed by benchmarks/keras_peer.py in its own environment."""
    out = subprocess.run(
        [str(python), str(ROOT / "benchmarks" / "keras_peer.py"), model, str(steps), str(epochs)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["epoch_seconds"]


def paired_ratio(runs: dict[str, list[float]], a: str, b: str) -> float:
    """Median over repetitions of a/b within each repetition: this machine's speed drifts over
    minutes, and paths timed back to back see the same drift."""
    return statistics.median(x / y for x, y in zip(runs[a], runs[b], strict=False))


def steady(seconds: list[float]) -> float:
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "rnn", "bilstm"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is warm-up)")
    parser.add_argument("--images", type=int, default=6000, help="training images per epoch")
    parser.add_argument("--root", default=str(ROOT / "data"))
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=["lightning", "plain", "fast", "keras"],
        default=["lightning", "plain", "fast"],
        help="fast: trainer=gpu_fast/cpu_fast; keras: the study's own models",
    )
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--keras-python", default=str(ROOT / ".venv-keras" / "bin" / "python"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    args = parser.parse_args()

    datamodule = FashionMNISTDataModule(root=args.root)
    datamodule.prepare_data()
    datamodule.setup()
    images, labels = datamodule.train_set.images[: args.images], datamodule.train_set.labels[: args.images]
    rows = []
    for model in args.models:
        batch = compose_config([f"model={model}", "output_dir=."]).data.batch_size
        steps = args.images // batch
        device = "cuda" if args.accelerator == "gpu" else "cpu"
        timers = {
            "lightning": lambda: lightning_epoch_seconds(model, steps, args.epochs, args.root, args.accelerator),
            "plain": lambda: plain_seconds(model, steps, args.epochs, args.root, images, labels, device),
            "fast": lambda: lightning_epoch_seconds(model, steps, args.epochs, args.root, args.accelerator, fast=True),
            "keras": lambda: keras_seconds(model, steps, args.epochs, Path(args.keras_python)),
        }
        runs = {path: [] for path in args.paths}
        for rep in range(args.reps):
            for path in args.paths:
                runs[path].append(steady(timers[path]()))
            print(
                f"{model} rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in runs.items() if v), flush=True
            )
        row = {
            "model": model,
            "batch": batch,
            "steps": steps,
            **{k: statistics.median(v) for k, v in runs.items() if v},
            "spread": {k: (min(v), max(v)) for k, v in runs.items() if v},
            "runs": runs,
        }
        if "lightning" in row and "plain" in row:
            row["ratio"] = paired_ratio(runs, "lightning", "plain")
        row["final_train_loss"] = LAST_LOSSES.get(model, {})
        rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_line(), "rows": rows}, indent=2) + "\n")
    write_report(rows, args)


def machine_line() -> str:
    """Processor or GPU, threads and versions, for the report."""
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine()
    return (
        f"{where}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
        f"torch {torch.__version__}, lightning {lightning.__version__}"
    )


def _cell(row: dict, path: str) -> str:
    low, high = row["spread"][path]
    return f"{row[path]:.3f} ({low:.3f}–{high:.3f})" if low != high else f"{row[path]:.3f}"


def write_report(rows: list[dict], args) -> None:
    """Print the table and write it into docs/BENCHMARKS.md (one section per accelerator)."""
    titles = {
        "lightning": "Lightning (s/epoch)",
        "plain": "plain loop (s/epoch)",
        "fast": "fast path (s/epoch)",
        "keras": "Keras (s/epoch)",
    }
    ratios = {
        "Lightning / plain": ("lightning", "plain"),
        "plain / fast": ("plain", "fast"),
        "Lightning / Keras": ("lightning", "keras"),
    }
    ratios = {name: pair for name, pair in ratios.items() if set(pair) <= set(args.paths)}
    columns = [titles[path] for path in args.paths] + list(ratios)
    lines = [
        "| model | batch | steps/epoch | " + " | ".join(columns) + " |",
        "|---|---:|---:|" + "---:|" * len(columns),
    ]
    for r in rows:
        cells = [_cell(r, path) for path in args.paths] + [
            f"{paired_ratio(r['runs'], a, b):.3f}" for a, b in ratios.values()
        ]
        lines.append(f"| {r['model']} | {r['batch']} | {r['steps']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    command = "python benchmarks/bench.py " + " ".join(sys.argv[1:])
    generated = (
        f"Machine: {machine_line()}. Command: `{command.strip()}` "
        f"({args.reps} repetitions alternating the paths, {args.epochs} epochs each, first epoch left out; "
        f"{args.images} training images per epoch; median, with min–max over repetitions; ratios are the "
        f"median of each repetition's ratio).\n\n{table}"
    )
    section = "bench" if args.accelerator == "cpu" else "bench-gpu"
    write_section(Path(args.out), section, generated, "Benchmarks")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
