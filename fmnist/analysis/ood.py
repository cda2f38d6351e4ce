"""Measuring the garment gate: Fashion-MNIST's test garments against pictures that are not garments.

Six kinds of non-garment pictures, made offline and never used to fit the gate:
- digits: scikit-learn's bundled handwritten digits (8x8, 1,797 of them);
- letters: A-Z and a-z drawn in Pillow's bundled font, at random sizes, dark on white;
- words: lines of 2 to 9 letters, digits, `%` and `-`, as on a sign or a label, dark on white;
- photos: random square crops of scikit-learn's two bundled photos (a temple in China, a flower);
- noise: uniform noise of random sizes;
- shapes: filled ellipses, rectangles and triangles, dark on white.
Each goes through `to_fashion_mnist`, as a photo given to `predict` does. Per kind: AUROC and the false
positive rate at 95% true positives of the gate's score, with the energy score and the top probability as
baselines, and the share the gate flags; with the calibration error before and after temperature scaling,
and the share of test garments the gate keeps as they are and photographed as a shop would.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from sklearn.datasets import load_digits, load_sample_images
from sklearn.metrics import roc_auc_score, roc_curve

from fmnist.data.photos import to_fashion_mnist
from fmnist.models.gate import KEEP, Gate, NotANumber, calibration_error, network_outputs

KINDS = ("digits", "letters", "words", "photos", "noise", "shapes")
SCORES = ("gate", "energy", "top_prob")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SIGNS = LETTERS + "0123456789%-"


def _digits(n: int, rng: np.random.Generator) -> list[Image.Image]:
    digits = load_digits().images
    return [Image.fromarray((d * (255 / 16)).astype(np.uint8)) for d in digits[rng.permutation(len(digits))[:n]]]


def _letters(n: int, rng: np.random.Generator) -> list[Image.Image]:
    pictures = []
    for size, letter in zip(rng.integers(24, 96, n), rng.choice(list(LETTERS), n), strict=True):
        picture = Image.new("L", (2 * int(size), 2 * int(size)), 255)
        ImageDraw.Draw(picture).text(
            (size // 2, size // 3), str(letter), fill=0, font=ImageFont.load_default(int(size))
        )
        pictures.append(picture)
    return pictures


def _words(n: int, rng: np.random.Generator) -> list[Image.Image]:
    pictures = []
    for _ in range(n):
        word, size = "".join(rng.choice(list(SIGNS), int(rng.integers(2, 10)))), int(rng.integers(30, 90))
        picture = Image.new("L", (size * len(word), 2 * size), 255)
        ImageDraw.Draw(picture).text((5, size // 4), word, fill=0, font=ImageFont.load_default(size))
        pictures.append(picture)
    return pictures


def _photos(n: int, rng: np.random.Generator) -> list[Image.Image]:
    photos, pictures = load_sample_images().images, []
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(48, min(photo.shape[:2]) + 1))
        y, x = (int(rng.integers(0, photo.shape[k] - side + 1)) for k in (0, 1))
        pictures.append(Image.fromarray(photo[y : y + side, x : x + side]))
    return pictures


def _noise(n: int, rng: np.random.Generator) -> list[Image.Image]:
    return [Image.fromarray(rng.integers(0, 256, (int(s), int(s)), dtype=np.uint8)) for s in rng.integers(28, 200, n)]


def _shapes(n: int, rng: np.random.Generator) -> list[Image.Image]:
    pictures = []
    for i in range(n):
        picture = Image.new("L", (100, 100), 255)
        draw, fill = ImageDraw.Draw(picture), int(rng.integers(0, 160))
        (x0, x1), (y0, y1) = np.sort(rng.integers(5, 95, 2)), np.sort(rng.integers(5, 95, 2))
        box = [int(x0), int(y0), int(x1) + 1, int(y1) + 1]
        if i % 3 == 0:
            draw.ellipse(box, fill=fill)
        elif i % 3 == 1:
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([tuple(int(v) for v in rng.integers(5, 95, 2)) for _ in range(3)], fill=fill)
        pictures.append(picture)
    return pictures


MAKERS = {
    "digits": _digits,
    "letters": _letters,
    "words": _words,
    "photos": _photos,
    "noise": _noise,
    "shapes": _shapes,
}


def non_garments(kind: str, n: int, seed: int = 0) -> torch.Tensor:
    """Up to `n` pictures of `kind` prepared as `predict` prepares a file: (N, 1, 28, 28) floats in [0, 1].

    A picture that `to_fashion_mnist` finds blank (a shape drawn in white on white) is left out."""
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    prepared = []
    for picture in MAKERS[kind](n, rng):
        try:
            prepared.append(to_fashion_mnist(picture))
        except ValueError:
            continue
    return torch.stack(prepared)


def shop_photos(images: torch.Tensor) -> torch.Tensor:
    """Fashion-MNIST images (N, 1, 28, 28) uint8 as shop photos (dark on white, 280x280, JPEG) prepared as
    `predict` prepares a file: what the gate meets when a shop photographs a garment."""
    prepared = []
    for image in images[:, 0].numpy():
        photo = io.BytesIO()
        Image.fromarray(255 - image).resize((280, 280), Image.Resampling.BICUBIC).convert("RGB").save(photo, "JPEG")
        prepared.append(to_fashion_mnist(Image.open(photo)))
    return torch.stack(prepared)


def _scores(gate: Gate, outputs: tuple[torch.Tensor, torch.Tensor], kind: str) -> dict[str, np.ndarray]:
    """Each score of each image of `kind`; higher is more garment-like. NotANumber when the network's outputs on
    some of them are NaN or infinite (a network fine on the training garments may still overflow on others)."""
    embeddings, logits = outputs
    broken = int((~(embeddings.isfinite().all(dim=1) & logits.isfinite().all(dim=1))).sum())
    if broken:
        raise NotANumber(
            f"the network's outputs on {broken} of the {len(logits)} {kind} pictures are not numbers (NaN or inf): "
            "the checkpoint's weights are broken, and its garment gate cannot be measured"
        )
    return {
        "gate": gate.garment_score(embeddings).numpy(),
        "energy": (gate.temperature * torch.logsumexp(logits / gate.temperature, dim=1)).numpy(),
        "top_prob": gate.probabilities(logits).max(dim=1).values.numpy(),
    }


def _separation(garments: np.ndarray, others: np.ndarray) -> tuple[float, float]:
    """(AUROC, false positive rate at 95% true positives) of telling garments (positive) from the others."""
    truth = np.r_[np.ones(len(garments)), np.zeros(len(others))]
    values = np.r_[garments, others]
    fpr, tpr, _ = roc_curve(truth, values)
    return float(roc_auc_score(truth, values)), float(fpr[np.searchsorted(tpr, 0.95)])


def measure_gate(
    model: torch.nn.Module, gate: Gate, test_images: torch.Tensor, test_labels: torch.Tensor, n: int, seed: int = 0
) -> tuple[dict, dict[str, np.ndarray]]:
    """The gate's report (a JSON-ready dict) and the gate score of every image by kind (for the figure)."""
    embeddings, logits = network_outputs(model, test_images, desc="garment gate: test split")
    garments = _scores(gate, (embeddings, logits), "test garment")
    report = {
        "keep": KEEP,
        "threshold": gate.threshold,
        "temperature": gate.temperature,
        "calibration": {
            "val": {"ece_before": gate.ece_before, "ece_after": gate.ece_after},
            "test": {
                "ece_before": calibration_error(logits.softmax(dim=1), test_labels),
                "ece_after": calibration_error(gate.probabilities(logits), test_labels),
            },
        },
        "test_garments": {"images": len(test_labels), "kept": float((garments["gate"] >= gate.threshold).mean())},
        "kinds": {},
    }
    photographed = gate.garment_score(network_outputs(model, shop_photos(test_images[:n].cpu()))[0]).numpy()
    report["shop_photos"] = {"images": len(photographed), "kept": float((photographed >= gate.threshold).mean())}
    gate_scores = {"test garments": garments["gate"]}
    for kind in KINDS:
        others = _scores(gate, network_outputs(model, non_garments(kind, n, seed)), kind)
        row = {"images": len(others["gate"]), "flagged": float((others["gate"] < gate.threshold).mean())}
        for score in SCORES:
            row[f"{score}_auroc"], row[f"{score}_fpr95"] = _separation(garments[score], others[score])
        report["kinds"][kind] = row
        gate_scores[kind] = others["gate"]
    return report, gate_scores


def ood_markdown(report: dict, title: str) -> str:
    """The report as a Markdown table: one row per kind, the gate's figures first, then the baselines."""
    val, test = report["calibration"]["val"], report["calibration"]["test"]
    lines = [
        f"# Garment or not: {title}",
        "",
        f"Threshold {report['threshold']:.4g} on the garment score (keeps {report['keep']:.0%} of the validation "
        f"garments; {report['test_garments']['kept']:.2%} of the {report['test_garments']['images']:,} test "
        f"garments pass it, and {report['shop_photos']['kept']:.2%} of the first {report['shop_photos']['images']:,} "
        "as shop photos: dark on white, 280x280, JPEG, prepared as `predict` prepares a file).",
        "",
        "| kind | images | flagged not_garment | AUROC | FPR at 95% TPR | energy AUROC | top-prob AUROC |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, row in report["kinds"].items():
        lines.append(
            f"| {kind} | {row['images']:,} | {row['flagged']:.1%} | {row['gate_auroc']:.4f} | "
            f"{row['gate_fpr95']:.3f} | {row['energy_auroc']:.4f} | {row['top_prob_auroc']:.4f} |"
        )
    lines += [
        "",
        f"Temperature {report['temperature']:.4f} (fitted on the validation split). Expected calibration error "
        f"(15 bins): validation {val['ece_before']:.4f} before, {val['ece_after']:.4f} after; test "
        f"{test['ece_before']:.4f} before, {test['ece_after']:.4f} after.",
        "",
    ]
    return "\n".join(lines)


def ood_figure(report: dict, gate_scores: dict[str, np.ndarray], title: str):
    """Each kind's distance to the nearest garment class against the threshold, and each kind's ROC curve."""
    import matplotlib.pyplot as plt

    fig, (hist, roc) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    colors = dict(zip(gate_scores, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    distances = {kind: np.maximum(-values, 1e-3) for kind, values in gate_scores.items()}
    bins = np.geomspace(*np.percentile(np.concatenate(list(distances.values())), [0.1, 100]), 60)
    for kind, values in distances.items():
        share = np.full(len(values), 1 / len(values))
        hist.hist(values, bins=bins, weights=share, histtype="step", linewidth=1.6, color=colors[kind], label=kind)
    hist.axvline(-report["threshold"], color="black", linestyle="--", label=f"threshold (keeps {report['keep']:.0%})")
    hist.set(
        xscale="log",
        xlabel="distance to the nearest garment class (Mahalanobis, squared)",
        ylabel="share of the kind's pictures",
    )
    hist.set_title("Left of the line: garment; right: not_garment")
    hist.legend(fontsize="small", loc="upper left")  # the garments peak left of the line, the others right
    garments = gate_scores["test garments"]
    for kind in KINDS:
        truth = np.r_[np.ones(len(garments)), np.zeros(len(gate_scores[kind]))]
        fpr, tpr, _ = roc_curve(truth, np.r_[garments, gate_scores[kind]])
        label = f"{kind} (AUROC {report['kinds'][kind]['gate_auroc']:.3f})"
        roc.plot(np.maximum(fpr, 1e-3), tpr, color=colors[kind], label=label)
    roc.axhline(0.95, color="gray", linestyle=":", linewidth=1)
    roc.set(xscale="log", xlim=(1e-3, 1), xlabel="share of non-garments let through (0.1% and below at the left)")
    roc.set(ylabel="share of test garments kept", ylim=(0.4, 1.01), title="ROC: test garments against each kind")
    roc.legend(fontsize="small", loc="lower right")
    fig.suptitle(f"Garment or not: {title}")
    return fig
