"""Time to accuracy: a speedrun tier for N seeds through `fmnist.train`, then the same recipe in a plain loop.

    python benchmarks/speedrun.py --trainer cpu_bf16 --seeds 5 --cnn-epoch --plain   # the 2-core CPU's 93% tier
    python benchmarks/speedrun.py --experiment cpu95 --trainer cpu_bf16 --seeds 3 --cnn-epoch   # its 95% tier
    python benchmarks/speedrun.py --experiment speedrun_94 --trainer gpu_fast --seeds 20
    python benchmarks/speedrun.py --seeds 2 -r model.label_smoothing=0.2        # an ablation

The clock (airbench's convention): the data already on the device, from the first training step to the
final weights with the device synchronised, validation excluded: the sum of the run's `epoch_seconds`
(fmnist.training.callbacks.EpochTimer), plus the whitening's computation (timed here once: SpeedNet's setup
does it before the first epoch). On a GPU the first seed also pays the process's warm-up (cuDNN's
autotuning), so there its time is reported apart and left out of the mean and median. The test: the checkpoint
chosen on validation, on the official 10,000 images, plain and with flip TTA, timed on its own.
`--cnn-epoch` times one training epoch of the study's CNN (model=cnn, 54,000 images) on the same trainer,
the unit of the CPU tier's target; `--plain` times the same recipe in a plain PyTorch loop (whole epochs:
it ignores trainer.limit_train_batches).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import hydra
import lightning
import torch
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torchmetrics.functional.classification import multiclass_f1_score
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fmnist.analysis.results import read_results, write_results  # noqa: E402
from fmnist.data.datamodule import to_unit_float  # noqa: E402
from fmnist.models.base import optimizer_factory, triangular_schedule  # noqa: E402
from fmnist.models.checkpoint import load_model  # noqa: E402
from fmnist.models.summary import keras_param_counts  # noqa: E402
from fmnist.training.checks import check_config  # noqa: E402
from fmnist.training.fit import train  # noqa: E402
from fmnist.training.setup import build_model  # noqa: E402
from fmnist.utils.config import compose_config  # noqa: E402
from fmnist.utils.errors import FmnistError  # noqa: E402
from fmnist.utils.files import read_bytes, write_json  # noqa: E402

QUIET = ["trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0"]
MAX_SEEDS = 1000
MAX_SAVED_BYTES = 1 << 20  # a tier's --json file is a few KB


class Refused(SystemExit):
    """Exit status 2 for a bad option or input file; str() is its one `error: ...` line, which main prints."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(status)
        self.line = f"error: {' '.join(message.split())[:500]}"

    def __str__(self) -> str:
        return self.line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise Refused(message)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def test_figures(ckpt_path: str, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> dict:
    """Plain and flip-TTA accuracy of a checkpoint on uint8 test images, each with its own time."""
    model = load_model(ckpt_path).to(device).eval()
    images, labels = images.to(device), labels.to(device)
    figures = {"params_total_keras": keras_param_counts(model)["total"]}
    for name, flips in (("plain", False), ("tta", True)):
        _sync(device)
        start = time.perf_counter()
        predictions = torch.cat(
            [
                (model.tta_logits(to_unit_float(x)) if flips else model(to_unit_float(x))).argmax(1)
                for x in images.split(1000)
            ]
        )
        _sync(device)
        figures[f"seconds_{name}"] = time.perf_counter() - start
        figures[f"acc_{name}"] = (predictions == labels).float().mean().item()
        figures[f"macro_f1_{name}"] = multiclass_f1_score(predictions, labels, 10, average="macro").item()
    return figures


def recipe_settings(cfg) -> dict:
    """What a results row states of the recipe beyond its overrides (kept in the --json file)."""
    return {
        "epochs": int(cfg.trainer.max_epochs),
        "batch_size": int(cfg.data.batch_size),
        "optimizer": {k: v for k, v in OmegaConf.to_container(cfg.model.optimizer).items() if not k.startswith("_")},
    }


def results_row(result: dict) -> dict:
    """The tier as a row of docs/results.json and RESULTS.md (fmnist.analysis.results): flip-TTA figures."""
    done = [r for r in result["seeds"] if "error" not in r]
    recipe = " ".join([f"experiment={result['experiment']}", f"trainer={result['trainer']}", *result["overrides"]])
    settings = result["settings"]
    figures = [result["acc_tta"], result["acc_tta_std"], result["train_seconds"], *(r["acc_tta"] for r in done)]
    if not result["seeds"] or not all(isinstance(v, (int, float)) and 0 <= v < math.inf for v in figures):
        raise ValueError("its seeds, accuracies and times must be finite non-negative numbers")
    if not all(0 <= v <= 1 for v in figures[:2] + figures[3:]):
        raise ValueError("an accuracy outside 0..1")
    for text in (recipe, result["device"]):
        if not isinstance(text, str) or not text.isprintable() or any(c in text for c in "|<>`"):
            raise ValueError(f"{text!r} is not a plain line of text")
    return {
        "model": "speednet",
        "recipe": f"{recipe} (flip TTA)",
        "test_acc_mean": float(result["acc_tta"]),
        "test_acc_std": float(result["acc_tta_std"]),
        "macro_f1_mean": statistics.fmean(float(r["macro_f1_tta"]) for r in done) if done else 0.0,
        "seeds": [str(int(r["seed"])) for r in result["seeds"]],
        "epochs": int(settings["epochs"]),
        "train_seconds_mean": float(result["train_seconds"]),
        "device": str(result["device"]),
        "batch_size": int(settings["batch_size"]),
        "optimizer": {str(k): float(v) if not isinstance(v, bool) else v for k, v in settings["optimizer"].items()},
        "params_total_keras": int(done[0]["params_total_keras"]) if done else 0,
        "kind": "speedrun",
        "full_recipe": not result["overrides"],
    }


def run_seed(experiment: str, trainer: str, seed: int, overrides: list[str], folder: Path) -> dict:
    """One seed of a tier through fmnist.train (test=false: the harness tests); its figures."""
    cfg = compose_config(
        [f"experiment={experiment}", f"trainer={trainer}", f"seed={seed}", f"output_dir={folder}", "test=false"]
        + QUIET
        + overrides
    )
    metrics = train(cfg, next_steps_line=False)
    return {
        "seed": seed,
        "train_seconds": sum(metrics["epoch_seconds"]),
        "fit_seconds": metrics["train_seconds"],
        "epochs": metrics["epochs"],
        "steps": metrics["steps"],
        "val/acc_best": metrics.get("val/acc_best"),
        "device": metrics["device"],
        "best_checkpoint": str(folder / metrics["best_checkpoint"]),
    }


def cnn_epoch_seconds(trainer: str, folder: Path, overrides: list[str]) -> float:
    """One training epoch of the study's CNN recipe (batch 100, 54,000 images) on `trainer`, in float32 whatever
    the tier's precision (the unit is the study's recipe: trainer=cpu_bf16 must not shrink it)."""
    cfg = compose_config(
        [
            "model=cnn",
            f"trainer={trainer}",
            "trainer.precision=32-true",
            "trainer.max_epochs=1",
            "test=false",
            f"output_dir={folder}",
            "trainer.limit_val_batches=1",
        ]
        + QUIET
        + overrides
    )
    return train(cfg, next_steps_line=False)["epoch_seconds"][0]


def plain_seconds(experiment: str, trainer: str, seed: int, overrides: list[str]) -> float:
    """The same recipe (network, optimizer, schedule, label smoothing, augmentation, batches) in a plain loop."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([f"experiment={experiment}", f"trainer={trainer}", f"output_dir={tmp}"] + overrides)
    torch.manual_seed(seed)
    torch.set_flush_denormal(bool(cfg.flush_denormal))
    device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")
    datamodule = hydra.utils.instantiate(cfg.data, device_resident=False, batches_per_step=1)
    datamodule.setup("fit")
    images, labels = datamodule.train_set.images.to(device), datamodule.train_set.labels.to(device)
    model = hydra.utils.instantiate(cfg.model, fast_step=False).to(device)
    if getattr(model, "whitened", False):
        model.init_whitening(images)
    model.train()
    batch, epochs = cfg.data.batch_size, cfg.trainer.max_epochs
    per_epoch = math.ceil(len(labels) / batch)
    optimizer = optimizer_factory(model.hparams["optimizer"])([p for p in model.parameters() if p.requires_grad])
    schedule = (
        triangular_schedule(optimizer, per_epoch * epochs, *model.hparams["lr_triangle"])
        if model.hparams.get("lr_schedule")
        else None
    )
    augment = datamodule.augment  # as the data module applies it: kornia draws its parameters on the CPU
    bf16 = str(cfg.trainer.precision) == "bf16-mixed"  # Lightning's plugin: autocast around the forward
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(labels), device=device)
        for step in range(per_epoch):
            index = order[step * batch : (step + 1) * batch]
            x = to_unit_float(images[index])
            x = augment(x) if augment is not None else x
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model.training_loss(x, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
    _sync(device)
    return time.perf_counter() - start


def whitening_seconds(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> float:
    """The time SpeedNet's setup spends on its whitening filters (outside the epochs' clock, so added to it),
    from training images already on the device."""
    images = images.to(device)
    _sync(device)
    start = time.perf_counter()
    model.init_whitening(images)
    return time.perf_counter() - start


def add_saved_row(path: Path, docs: Path) -> None:
    """Write the docs/ row of a tier measured earlier (its `--json` file): the row's figures, nothing else."""
    try:
        row = results_row(json.loads(read_bytes(path, MAX_SAVED_BYTES)))
    except (OSError, ValueError, LookupError, TypeError, AttributeError, ArithmeticError, RecursionError) as error:
        raise Refused(f"--results-from {path}: not a tier's --json file ({str(error)[:200]})") from None
    try:
        write_results([row], docs)
    except (OSError, FmnistError) as error:
        raise Refused(f"--docs {docs}: {error}") from None
    print(f"{docs}/results.json and RESULTS.md: the row of {path} added")


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, std); NaN for no values (every seed failed)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def check_options(args) -> None:
    """Refuse bad options before any data is read or any seed is trained."""
    if not 1 <= args.seeds <= MAX_SEEDS:
        raise Refused(f"--seeds must be from 1 to {MAX_SEEDS}, not {args.seeds}")
    if not 0 <= args.first_seed <= 2**32 - args.seeds:
        raise Refused(f"--first-seed: the seeds {args.first_seed}.. must lie in 0..{2**32 - 1}")
    if args.json is not None:
        if args.json.exists() and not args.json.is_file():
            raise Refused(f"--json {args.json}: not a file")
        if any(folder.exists() and not folder.is_dir() for folder in args.json.parents):
            raise Refused(f"--json {args.json}: its folder is a file")
    if args.results:
        try:
            read_results(args.docs / "results.json")
        except FmnistError as error:
            raise Refused(f"--docs {args.docs}: {error}") from None


def main(argv: list[str] | None = None) -> None:
    """The command; a bad option or input file ends it with one `error: ...` line and exit status 2."""
    try:
        run(argv)
    except Refused as refused:
        print(refused, file=sys.stderr)
        raise


def run(argv: list[str] | None = None) -> None:
    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="speedrun", help="the tier's config: speedrun, speedrun_94, ...")
    parser.add_argument(
        "--trainer", default="cpu_fast", help="cpu_fast, cpu_bf16 (a CPU with AVX512-BF16 or AMX) or gpu_fast"
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--cnn-epoch", action="store_true", help="also time one epoch of the study's CNN")
    parser.add_argument("--plain", action="store_true", help="also time the recipe in a plain PyTorch loop")
    parser.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        help="a Hydra override for every run, the CNN's too (data paths, trainer settings)",
    )
    parser.add_argument(
        "-r",
        "--recipe",
        action="append",
        default=[],
        help="a Hydra override for the tier's runs only (an ablation: -r model.label_smoothing=0.2)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--results", action="store_true", help="add the tier's row to docs/results.json and docs/RESULTS.md"
    )
    parser.add_argument(
        "--results-from", type=Path, help="add the row of a run's --json file to docs/ instead of running the tier"
    )
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where --results writes (default: docs/)")
    args = parser.parse_args(argv)
    if args.results_from:
        add_saved_row(args.results_from, args.docs)
        return
    check_options(args)

    with tempfile.TemporaryDirectory() as tmp:
        recipe = args.override + args.recipe
        try:
            cfg = compose_config(
                [f"experiment={args.experiment}", f"trainer={args.trainer}", f"output_dir={tmp}"] + recipe
            )
            check_config(cfg)  # the checks a run makes, before any data is read
            try:
                target = float(cfg.tier)
            except (TypeError, ValueError):
                raise FmnistError(f"tier={cfg.tier}: must be a number (the accuracy the tier aims at)") from None
            model = build_model(cfg.model)  # its whitening settings, with the constructor's defaults
            datamodule = hydra.utils.instantiate(cfg.data, device_resident=False)
            datamodule.setup("fit")
        except (HydraException, OmegaConfBaseException, FmnistError, ValueError, TypeError, OSError) as error:
            message = f"{' '.join(str(error).split())[:300]} (the tier's config with {recipe or 'no overrides'})"
            raise Refused(message) from None
        test_images, test_labels = datamodule.test_set.images, datamodule.test_set.labels
        device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")
        whitened = getattr(model, "whitened", False)
        whiten = whitening_seconds(model, datamodule.train_set.images, device) if whitened else 0.0
        rows = []
        for seed in tqdm(range(args.first_seed, args.first_seed + args.seeds), desc=args.experiment, unit="seed"):
            try:
                row = run_seed(args.experiment, args.trainer, seed, recipe, Path(tmp) / f"seed_{seed}")
            except FmnistError as error:  # a diverged seed counts as a miss; the other seeds go on
                rows.append(
                    {
                        "seed": seed,
                        "error": str(error)[:300],
                        "acc_plain": 0.0,
                        "acc_tta": 0.0,
                        "train_seconds": float("nan"),
                        "seconds_tta": float("nan"),
                        "device": "?",
                    }
                )
                tqdm.write(f"seed {seed}: {error}")
                continue
            row["train_seconds"] += whiten
            row["whiten_seconds"] = whiten
            row.update(test_figures(row.pop("best_checkpoint"), test_images, test_labels, device))
            rows.append(row)
            tqdm.write(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
        result = {
            "experiment": args.experiment,
            "trainer": args.trainer,
            "overrides": recipe,
            "tier": target,
            "device": rows[0]["device"],
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "python": platform.python_version(),
            "seeds": rows,
            "settings": recipe_settings(cfg),
        }
        # On a GPU the first seed pays the process's warm-up (cuDNN's autotuning): timed apart. A CPU has none.
        warm = rows[1:] if len(rows) > 1 and device.type == "cuda" else rows
        timed = [r for r in warm if "error" not in r]
        for name in ("acc_tta", "acc_plain"):
            result[name], result[f"{name}_std"] = mean_std([r[name] for r in rows])
        result["at_target"] = sum(r["acc_tta"] >= target for r in rows) / len(rows)
        result["train_seconds"], result["train_seconds_std"] = mean_std([r["train_seconds"] for r in timed])
        # also the median: this VM has bursts
        result["train_seconds_median"] = statistics.median(r["train_seconds"] for r in timed) if timed else math.nan
        result["first_seed_train_seconds"] = rows[0]["train_seconds"]
        tested = [r["seconds_tta"] for r in rows if "error" not in r]
        result["test_seconds_tta"] = statistics.median(tested) if tested else math.nan
        if args.cnn_epoch:
            result["cnn_epoch_seconds"] = cnn_epoch_seconds(args.trainer, Path(tmp) / "cnn", args.override)
            result["cnn_epochs"] = result["train_seconds_median"] / result["cnn_epoch_seconds"]
        if args.plain:
            result["plain_seconds"] = plain_seconds(args.experiment, args.trainer, args.first_seed, recipe)
            result["lightning_over_plain"] = result["train_seconds_median"] / result["plain_seconds"]
    n = len(rows)
    print(
        f"{args.experiment} on {result['device']} ({args.trainer}), {n} seeds: test accuracy with flip TTA "
        f"{result['acc_tta']:.4f} ± {result['acc_tta_std']:.4f} (plain {result['acc_plain']:.4f} ± "
        f"{result['acc_plain_std']:.4f}), {result['at_target']:.0%} of seeds ≥ {target}; training "
        f"{result['train_seconds']:.2f} ± {result['train_seconds_std']:.2f} s, median "
        f"{result['train_seconds_median']:.2f} s (first seed "
        f"{result['first_seed_train_seconds']:.2f} s); test with TTA {result['test_seconds_tta']:.2f} s"
    )
    if args.cnn_epoch:
        print(
            f"one epoch of the study's CNN: {result['cnn_epoch_seconds']:.1f} s; the speedrun = "
            f"{result['cnn_epochs']:.2f} such epochs"
        )
    if args.plain:
        print(
            f"plain PyTorch loop: {result['plain_seconds']:.2f} s; "
            f"Lightning / plain = {result['lightning_over_plain']:.3f}"
        )
    try:
        if args.json:
            write_json(args.json, result)
        if args.results:
            write_results([results_row(result)], args.docs)
            print(f"{args.docs}/results.json and RESULTS.md: the tier's row added")
    except FmnistError as error:
        raise Refused(str(error), status=1) from None
    except ValueError as error:  # results_row: e.g. every seed failed, so there are no figures
        raise Refused(f"--results: the tier's row is not written ({error})", status=1) from None


if __name__ == "__main__":
    main()
