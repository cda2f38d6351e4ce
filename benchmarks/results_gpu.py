"""Summarise benchmarks/results_gpu.sh: per model its seeds' test accuracy (plain and flip TTA), fit times and
GPU time, as JSON on stdout and in a file.

    python benchmarks/results_gpu.py RUNS WAVES OUT.json

RUNS holds <model>/<seed>/metrics.json and <model>/<seed>.ended ("exit-status end-time"); WAVES has a line
"name start-time model..." per wave. A wave's wall time runs from its start to its last run's end; the runs of
a wave shared the GPU with each other (and with the resnet runs, which ran alongside every wave), so a run's
GPU-seconds are the wave's wall time divided by its runs: an upper bound of what the run needs alone.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def summary(runs: Path, waves: Path) -> dict:
    """{model: figures} for every model of the waves file."""
    out = {}
    for line in waves.read_text().splitlines():
        name, start, *models = line.split()
        ended = {m: sorted(runs.glob(f"{m}/*.ended")) for m in models}
        ends = [float(p.read_text().split()[1]) for files in ended.values() for p in files]
        wall = max(ends) - float(start) if ends else None
        count = sum(len(files) for files in ended.values())
        gpu_seconds = wall / count if wall and count else None  # the wave's, shared by its runs
        for model in models:
            metrics = [json.loads(p.read_text()) for p in sorted(runs.glob(f"{model}/*/metrics.json"))]
            tested = [m for m in metrics if "test/acc" in m]
            accs = [m["test/acc"] for m in tested]
            tta = [m["test/acc_tta"] for m in tested if "test/acc_tta" in m]
            mean = statistics.fmean(accs) if accs else None
            out[model] = {
                "wave": name,
                "runs_in_wave": count,
                "wave_wall_seconds": round(wall, 1) if wall else None,
                "exit_codes": [int(p.read_text().split()[0]) for p in ended[model]],
                "seeds": [m.get("seed") for m in tested],
                "epochs": [m.get("epochs") for m in tested],
                "test_acc": accs,
                "test_acc_mean": mean,
                "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "test_acc_tta_mean": statistics.fmean(tta) if tta else None,
                "train_seconds": [round(m["train_seconds"], 1) for m in tested if "train_seconds" in m],
                "gpu_seconds_per_run": round(gpu_seconds, 1) if gpu_seconds else None,
                "acc_per_gpu_minute": round(mean / (gpu_seconds / 60), 4) if mean and gpu_seconds else None,
                "device": tested[0].get("device") if tested else None,
            }
    return out


def main(argv: list[str]) -> int:
    runs, waves, target = (Path(a) for a in argv)
    figures = summary(runs, waves)
    target.write_text(json.dumps(figures, indent=2) + "\n")
    for model, f in figures.items():
        acc = "-" if f["test_acc_mean"] is None else f"{f['test_acc_mean']:.4f} ± {f['test_acc_std']:.4f}"
        print(
            f"{model}: {acc} over {len(f['test_acc'])} seeds, fit {f['train_seconds']} s, wave {f['wave']} "
            f"{f['wave_wall_seconds']} s for {f['runs_in_wave']} runs, exits {f['exit_codes']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
