"""Describing the data set and drawing samples of each class (the logic of `fmnist.explore`).

Prints, for the training and test sets, type, shape, labels with class names and counts, pixel
minimum, maximum, mean and std; writes `samples.png`, one labelled row of examples per class.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fmnist.data.idx import CLASS_NAMES, ensure_raw_files, load_split  # noqa: E402
from fmnist.utils.checks import boolean, check_new_files, check_output_folder, check_values  # noqa: E402
from fmnist.utils.files import write_figure  # noqa: E402


def describe(name: str, images: torch.Tensor, labels: torch.Tensor) -> str:
    """A plain-text description of one split."""
    counts = torch.bincount(labels, minlength=len(CLASS_NAMES))
    pixels = images.float()
    lines = [
        f"{name}: {type(images).__name__} {images.dtype}, images {tuple(images.shape)}, labels {tuple(labels.shape)}",
        f"  pixels: min {int(images.min())}, max {int(images.max())}, mean {pixels.mean():.2f}, "
        f"std {pixels.std():.2f} (on 0..255; divided by 255 for training)",
        "  label  class         count",
    ]
    lines += [f"  {i:>5}  {CLASS_NAMES[i]:<12}  {int(c):>6,}" for i, c in enumerate(counts)]
    return "\n".join(lines)


def samples_figure(images: torch.Tensor, labels: torch.Tensor, per_class: int = 10):
    """One row per class, its first `per_class` training images, the class name on the left."""
    fig, axes = plt.subplots(len(CLASS_NAMES), per_class, figsize=(per_class * 1.1 + 1.6, len(CLASS_NAMES) * 1.15))
    for row, name in enumerate(CLASS_NAMES):
        picks = (labels == row).nonzero().flatten()[:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(picks):
                ax.imshow(images[picks[col], 0].numpy(), cmap="gray", vmin=0, vmax=255)
            if col == 0:
                ax.set_ylabel(f"{row}: {name}", rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle("Fashion-MNIST training examples, one row per class")
    fig.tight_layout()
    return fig


def explore(cfg: DictConfig) -> Path:
    """Print the description of both splits and write samples.png; return its path."""
    check_values(cfg, {"overwrite": (boolean, "true or false", None, "true or false", False)})
    output = Path(cfg.output_dir)
    check_output_folder(output)
    check_new_files([output / "samples.png"], cfg.overwrite)  # before the data is read
    data = cfg.data
    ensure_raw_files(data.root, data.search_dirs, data.download)
    splits = {"training set": load_split(data.root, train=True), "test set": load_split(data.root, train=False)}
    for name, (images, labels) in splits.items():
        print(describe(name, images, labels))
    output.mkdir(parents=True, exist_ok=True)
    fig = samples_figure(*splits["training set"], per_class=cfg.samples_per_class)
    write_figure(fig, output / "samples.png", dpi=100)
    plt.close(fig)
    print(f"wrote {output / 'samples.png'}")
    return output / "samples.png"
