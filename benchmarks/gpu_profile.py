"""Where a GPU training step's time goes, without Lightning: eager step, graphed step, GPU kernel time.

    python benchmarks/gpu_profile.py [--models cnn rnn bilstm] [--steps 300] [--json out.json]

For each network at its study batch size (random data, same module and optimizer as `fmnist.train`):
ms per step of the eager step, ms per step of the fast path's graphed step plus the optimizer
step, and the summed CUDA kernel time of one step from torch.profiler. When the graphed step takes
about the kernel time, the step is GPU-bound and launch overhead is gone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmnist.models.graphed import GraphedTrainStep  # noqa: E402
from fmnist.utils.config import compose_config  # noqa: E402


def ms_per_step(step, steps: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1000


def profile_model(name: str, steps: int, overrides: list[str]) -> dict:
    cfg = compose_config([f"model={name}", "output_dir=.", *overrides])
    module = hydra.utils.instantiate(cfg.model).cuda().train()
    optimizer = module.configure_optimizers()
    batch = cfg.data.batch_size
    images = torch.rand(batch, 1, 28, 28, device="cuda")
    labels = torch.randint(0, 10, (batch,), device="cuda")

    def eager():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(module(images), labels).backward()
        optimizer.step()

    graphed = GraphedTrainStep(module.training_loss, module)

    def fast():
        graphed(images, labels)
        optimizer.step()

    for _ in range(10):
        eager()
    eager_ms = ms_per_step(eager, steps // 3)
    for _ in range(10):
        fast()  # the first steps warm up and capture
    fast_ms = ms_per_step(fast, steps)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            eager()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    kernel_ms = sum(e.device_time for e in kernels) / 20 / 1000
    return {
        "model": name,
        "batch": batch,
        "eager_ms": eager_ms,
        "graphed_ms": fast_ms,
        "kernel_ms": kernel_ms,
        "kernels_per_step": len(kernels) / 20,
        "graph_captured": graphed.graph is not None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "rnn", "bilstm"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--override", nargs="*", default=[], help="config overrides, e.g. model.channels_last=false")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = [profile_model(name, args.steps, args.override) for name in args.models]
    print("| model | batch | eager ms/step | graphed ms/step | GPU kernel ms/step | kernels/step |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['batch']} | {r['eager_ms']:.2f} | {r['graphed_ms']:.2f} | {r['kernel_ms']:.2f} "
            f"| {r['kernels_per_step']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
