"""Pack what a GPU lease needs beside the working tree: `make gpu-pack`.

    python benchmarks/lease_pack.py [--out .whl] [--data /usr/share/datasets/fashion-mnist]

The GPU machine (docs/GPU.md) has Python 3.12, torch, Lightning and most of fmnist's needs, no internet, and
receives at most 64 MiB: the working tree plus the folders carried beside it. This writes into `--out`
(ignored by git):

- one cp312 manylinux wheel of each distribution that the lease's commands import and the GPU image lacks
  (`benchmarks/gpu_image.txt`), at the version installed here, so the versions are ones that work together;
- the four Fashion-MNIST `.gz` files in `<out>/fashion-mnist/`;
- `PACK.json`: what was packed. A later pack removes only the files its PACK.json lists.

It then checks that the tree that travels plus `--out` stays under 64 MiB.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20  # what travels to the GPU machine: the tree and the carried folders together
DATA_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# The modules the lease's tiers reach: the commands, the benchmark scripts and the libraries they load lazily.
LEASE_MODULES = (
    "fmnist.train",
    "fmnist.reproduce",
    "fmnist.evaluate",
    "benchmarks.speedrun",
    "benchmarks.bench",
    "benchmarks.gpu_profile",
    "kornia.augmentation",
    "lightning.pytorch.loggers",
    "torch.utils.tensorboard",
    "matplotlib.pyplot",
    "sklearn.metrics",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def canonical(name: str) -> str:
    """A distribution's name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions() -> set[str]:
    """The distributions a fresh interpreter loads for LEASE_MODULES (run apart, so this process's own
    imports do not count)."""
    code = (
        "import importlib, importlib.metadata as md, json, sys\n"
        f"for name in {LEASE_MODULES!r}: importlib.import_module(name)\n"
        "found = md.packages_distributions()\n"
        "print(json.dumps(sorted({d for m in list(sys.modules) for d in found.get(m.split('.')[0], [])})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return {canonical(d) for d in json.loads(out.splitlines()[-1])} - {"fmnist"}


def needed() -> dict[str, str]:
    """{distribution: version installed here} for what the GPU image lacks."""
    lines = (ROOT / "benchmarks" / "gpu_image.txt").read_text().splitlines()
    image = {canonical(line.strip()) for line in lines if line.strip() and not line.startswith("#")}
    return {d: importlib.metadata.version(d) for d in sorted(imported_distributions() - image)}


def fetch(name: str, version: str, into: Path) -> Path:
    """The cp312 manylinux wheel of name==version in `into` (downloaded, or built from the sdist where PyPI has
    no wheel, as for antlr4-python3-runtime 4.9.3, which is pure Python)."""
    spec = f"{name}=={version}"
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    pip = [sys.executable, "-m", "pip", "-q"]
    download = [*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    quiet = {"capture_output": True, "text": True, "check": False}
    done = subprocess.run([*download, "--implementation", "cp", *platforms, "-d", str(into), spec], **quiet)
    if done.returncode != 0:
        done = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(into), spec], **quiet)
    if done.returncode != 0:
        raise SystemExit(f"error: pip could not fetch {spec}:\n{done.stderr.strip()[-2000:]}")
    wheels = [w for w in into.glob("*.whl") if canonical(w.name.split("-")[0]) == canonical(name)]
    if len(wheels) != 1:
        raise SystemExit(f"error: expected one wheel of {spec} in {into}, found {[w.name for w in wheels]}")
    tags = wheels[0].name[: -len(".whl")].split("-")[-3:]
    if tags[1:] != ["none", "any"] and tags[0] != "cp312":  # a build for this machine's Python would not install
        raise SystemExit(f"error: {wheels[0].name} is not for the GPU machine's Python 3.12 (no cp312 wheel on PyPI)")
    return wheels[0]


def travelling_bytes() -> int:
    """The size of what the device tool sends: tracked files and untracked files git does not ignore."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def clear_earlier(out: Path) -> None:
    """Remove the files an earlier pack listed in its PACK.json; refuse a folder that is not a pack."""
    manifest = out / "PACK.json"
    if not out.exists():
        return
    if not manifest.is_file():
        if any(out.iterdir()):
            raise SystemExit(f"error: {out} holds files but no PACK.json: not a folder this command made; give --out")
        return
    earlier = json.loads(manifest.read_text())
    listed = earlier.get("wheels", {}).values() if isinstance(earlier, dict) else []
    wheels = [name for name in listed if isinstance(name, str) and re.fullmatch(r"[\w.+-]+\.whl", name)]
    for path in [*(out / n for n in wheels), *(out / "fashion-mnist" / f for f in DATA_FILES), manifest]:
        if path.is_file() or path.is_symlink():
            path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".whl")
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    args = parser.parse_args(argv)
    missing = [f for f in DATA_FILES if not (args.data / f).is_file()]
    if missing:
        print(f"error: --data={args.data} lacks {', '.join(missing)}. Fix: make data, or give --data", file=sys.stderr)
        return 2
    clear_earlier(args.out)
    (args.out / "fashion-mnist").mkdir(parents=True, exist_ok=True)
    wheels = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, version in needed().items():
            wheel = fetch(name, version, Path(tmp))
            shutil.copyfile(wheel, args.out / wheel.name)
            wheels[f"{name}=={version}"] = wheel.name
            print(f"packed {wheel.name} ({wheel.stat().st_size / 2**20:.1f} MiB)")
    for name in DATA_FILES:
        shutil.copyfile(args.data / name, args.out / "fashion-mnist" / name)
    (args.out / "PACK.json").write_text(json.dumps({"wheels": wheels, "data": list(DATA_FILES)}, indent=2) + "\n")
    packed = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file() and not p.is_symlink())
    tree = travelling_bytes()
    total = packed + tree
    print(
        f"{args.out}: {len(wheels)} wheels and the data, {packed / 2**20:.1f} MiB; with the tree that travels "
        f"({tree / 2**20:.1f} MiB) {total / 2**20:.1f} of {LIMIT / 2**20:.0f} MiB"
    )
    if total > LIMIT:
        print(f"error: {total / 2**20:.1f} MiB would travel, over the GPU machine's 64 MiB", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
