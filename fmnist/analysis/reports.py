"""The study's tables and plots for one model: classification report, confusion matrix,
most confident mistakes, training curves. The report's numbers come from scikit-learn, the confusion matrix
from torchmetrics, plots from matplotlib.
"""

from __future__ import annotations

import os
import stat
import struct
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import classification_report as sklearn_report  # noqa: E402
from torchmetrics.functional.classification import multiclass_confusion_matrix  # noqa: E402

from fmnist.data.datamodule import to_unit_float  # noqa: E402
from fmnist.utils.console import say  # noqa: E402
from fmnist.utils.files import write_figure, write_json, write_text  # noqa: E402


@torch.inference_mode()
def predictions(model: torch.nn.Module, loader, device: torch.device | str = "cpu", embed: bool = False):
    """(logits (N, C), labels (N,), uint8 images (N, 1, 28, 28)) over a whole loader.

    With `embed=True` the first tensor is `model.embed`'s penultimate activations instead.
    """
    model.eval().to(device)
    forward = model.embed if embed else model
    outputs, labels, images = [], [], []
    for x, y in loader:
        outputs.append(forward(to_unit_float(x.to(device))).float().cpu())
        labels.append(y.cpu())  # a device-resident test set (trainer=gpu_fast) comes back to the host here
        images.append(x.cpu())
    return torch.cat(outputs), torch.cat(labels), torch.cat(images)


def classification_report(probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict:
    """Per class precision, recall, F1 and support, then accuracy, macro avg and weighted avg: scikit-learn's
    report, with accuracy as a row like the others (its f1-score and support; no precision or recall)."""
    report = sklearn_report(
        labels.numpy(),
        probs.argmax(dim=1).numpy(),
        labels=range(len(class_names)),
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )
    report["accuracy"] = {"precision": None, "recall": None, "f1-score": report["accuracy"], "support": len(labels)}
    return {
        name: {
            key: None if value is None else (int(value) if key == "support" else float(value))
            for key, value in row.items()
        }
        for name, row in report.items()
    }


def report_markdown(report: dict, title: str = "Classification report") -> str:
    """The report as a Markdown table laid out like the study's (and scikit-learn's) tables."""
    lines = [f"# {title}", "", "| | precision | recall | f1-score | support |", "|---|---:|---:|---:|---:|"]
    for name, row in report.items():
        cells = ["" if row[k] is None else f"{row[k]:.3f}" for k in ("precision", "recall", "f1-score")]
        lines.append(
            f"| {'**' + name + '**' if name in ('accuracy', 'macro avg', 'weighted avg') else name} | "
            f"{' | '.join(cells)} | {row['support']:,} |"
        )
    return "\n".join(lines) + "\n"


def report_text(report: dict) -> str:
    """The report as an aligned plain-text table for the terminal."""
    width = max(map(len, report)) + 2
    lines = [f"{'':>{width}}{'precision':>11}{'recall':>11}{'f1-score':>11}{'support':>10}"]
    for name, row in report.items():
        if name == "accuracy":
            lines.append("")
        cells = "".join(
            f"{'' if row[k] is None else format(row[k], '.3f'):>11}" for k in ("precision", "recall", "f1-score")
        )
        lines.append(f"{name:>{width}}{cells}{row['support']:>10,}")
    return "\n".join(lines)


def confusion_matrix_figure(probs, labels, class_names: Sequence[str]):
    """Counts and row-normalised confusion matrices side by side."""
    n = len(class_names)
    counts = multiclass_confusion_matrix(probs, labels, n).numpy()
    rates = multiclass_confusion_matrix(probs, labels, n, normalize="true").numpy()
    fig, axes = plt.subplots(1, 2, figsize=(17, 7.5))
    for ax, matrix, title, fmt in (
        (axes[0], counts, "Counts", "d"),
        (axes[1], rates, "Row-normalised (recall)", ".2f"),
    ):
        image = ax.imshow(matrix, cmap="Blues")
        ax.set_title(title)
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    format(matrix[i, j], fmt),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black",
                )
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def misclassified_figure(probs, labels, images, class_names: Sequence[str], count: int = 25):
    """A grid of the test images the model got wrong with the highest confidence."""
    confidence, predicted = probs.max(dim=1)
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:count]
    cols = 5
    rows = max(1, (len(order) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.3, rows * 2.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order.tolist(), strict=False):
        ax.imshow(images[i, 0].numpy(), cmap="gray_r")
        ax.set_title(
            f"true: {class_names[labels[i]]}\npred: {class_names[predicted[i]]} ({confidence[i]:.0%})", fontsize=8
        )
    fig.suptitle(f"Most confident mistakes ({len(wrong):,} wrong of {len(labels):,})")
    fig.tight_layout()
    return fig


def events_dir(tensorboard_dir: str | Path) -> Path | None:
    """The folder that holds a run's TensorBoard events: its one `tensorboard/<run name>/`, or
    `tensorboard/` itself (runs from before the names); None when there are none."""
    folder = Path(tensorboard_dir)
    if any(folder.glob("events.out.tfevents.*")):
        return folder
    named = [d for d in folder.glob("*/") if d.is_dir() and any(d.glob("events.out.tfevents.*"))]
    return named[0] if len(named) == 1 else None


CURVE_TAGS = ("train/acc", "val/acc", "train/loss", "val/loss")
EVENTS_MAX_BYTES = 1 << 30  # a run's event file is a few MB: a larger one is not read
RECORD_READ_MAX = 1 << 20  # a scalar's record is ~100 bytes: a longer one (an image) is stepped over, unread
CURVE_MAX_POINTS = 100_000  # per curve: one point per epoch


def _event_records(file, size: int):
    """(data, data crc) of each TFRecord of an open event file of `size` bytes, or None for a record too long
    to be a scalar's (stepped over). ValueError where the file is cut short or a record's length is damaged:
    no length is trusted beyond its checksum, the bytes left in the file and RECORD_READ_MAX."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    while header := file.read(12):  # uint64 length, uint32 masked crc of the length
        if len(header) < 12:
            raise ValueError("cut short in a record's header")
        length, crc = struct.unpack("<QI", header)
        if masked_crc32c(header[:8]) != crc:
            raise ValueError("a record's length fails its checksum")
        if length + 4 > size - file.tell():
            raise ValueError(f"a record announces {length:,} bytes, more than the file holds")
        if length > RECORD_READ_MAX:
            file.seek(length + 4, os.SEEK_CUR)
            yield None
            continue
        data, footer = file.read(length), file.read(4)
        if len(data) < length or len(footer) < 4:
            raise ValueError("cut short in a record")
        yield data, struct.unpack("<I", footer)[0]


def _read_event_file(path: Path, curves: dict[str, list[float]]) -> str:
    """Add the curves' points of one event file to `curves`; '' or why the file was not read to its end."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    with open(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "is not a regular file"
        if info.st_size > EVENTS_MAX_BYTES:
            return f"is over {EVENTS_MAX_BYTES >> 30} GiB, more than a run writes"
        try:
            for record in _event_records(file, info.st_size):
                if record is None:
                    continue
                try:
                    event = Event.FromString(record[0])
                except DecodeError:
                    return "holds a record that is not an event"
                points = [v for v in event.summary.value if v.tag in CURVE_TAGS and v.HasField("simple_value")]
                if points and masked_crc32c(record[0]) != record[1]:
                    return "holds a record that fails its checksum"
                for value in points:
                    if len(curves[value.tag]) >= CURVE_MAX_POINTS:
                        return f"holds over {CURVE_MAX_POINTS:,} points of {value.tag}"
                    curves[value.tag].append(value.simple_value)
        except (OSError, ValueError) as error:
            return str(error)
    return ""


def read_curves(tensorboard_dir: str | Path) -> dict[str, list[float]]:
    """Per-epoch train/val accuracy and loss as logged to TensorBoard by a training run: the scalars of its
    event files in name order (as TensorBoard reads them). A damaged file is read up to the damage, with a note."""
    folder = Path(tensorboard_dir)
    files = [folder] if not folder.is_dir() else sorted(p for p in folder.iterdir() if "tfevents" in p.name)
    curves: dict[str, list[float]] = defaultdict(list)
    for path in files:
        problem = _read_event_file(path, curves)
        if problem:
            say(f"note: the event file {path} {problem}: its curves are left out from there")
    return {tag: curves[tag] for tag in CURVE_TAGS if curves[tag]}


def curves_figure(curves: dict[str, list[float]], title: str = ""):
    """Accuracy and loss per epoch, training and validation, in two panels like the study's figures."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    epochs = max((len(values) for values in curves.values()), default=0)
    for ax, metric in zip(axes, ("acc", "loss"), strict=False):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = curves.get(f"{split}/{metric}", [])
            if values:
                ax.plot(range(1, len(values) + 1), values, style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, max(epochs, 1) + 0.5)  # whole epochs, counted from 1, also for a one-epoch run
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylabel({"acc": "accuracy", "loss": "loss"}[metric])
        ax.set_title(f"{title} {'accuracy' if metric == 'acc' else 'loss'}".strip())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


# What `write_reports` writes (curves.png when there are curves) and what a finished run adds beside them.
REPORT_FILES = (
    "confusion_matrix.png",
    "misclassified.png",
    "curves.png",
    "classification_report.md",
    "classification_report.json",
    "metrics.json",
    "model_summary.md",
)


def write_reports(
    model: torch.nn.Module,
    loader,
    class_names: Sequence[str],
    output_dir: str | Path,
    device="cpu",
    tensorboard_dir: str | Path | None = None,
    writer=None,
    tag_prefix: str = "reports/",
    step: int = 0,
    title: str = "",
    epochs: int | None = None,
) -> dict:
    """Predict over `loader` and write the report files; log the figures to `writer` if given, tagged
    `tag_prefix` + their name, at `step`.

    Returns (classification report, mean cross-entropy). Also writes `curves.png` when
    `tensorboard_dir` holds curves: their first `epochs` when given (the evaluated checkpoint's).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    logits, labels, images = predictions(model, loader, device)
    probs = logits.softmax(dim=1)
    report = classification_report(probs, labels, class_names)
    write_json(output_dir / "classification_report.json", report)
    write_text(
        output_dir / "classification_report.md", report_markdown(report, f"Classification report {title}".strip())
    )
    say(report_text(report))
    figures = {
        "confusion_matrix": confusion_matrix_figure(probs, labels, class_names),
        "misclassified": misclassified_figure(probs, labels, images, class_names),
    }
    curves = read_curves(tensorboard_dir) if tensorboard_dir and Path(tensorboard_dir).exists() else {}
    if curves:
        if epochs:  # a checkpoint of an earlier epoch: its curves end there
            curves = {name: values[:epochs] for name, values in curves.items()}
        figures["curves"] = curves_figure(curves, title)
    for name, fig in figures.items():
        write_figure(fig, output_dir / f"{name}.png", dpi=110)
        if writer is not None:
            writer.add_figure(f"{tag_prefix}{name}", fig, global_step=step, close=False)
        plt.close(fig)
    return report, float(torch.nn.functional.cross_entropy(logits, labels))
