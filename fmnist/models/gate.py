"""Garment or not: how Fashion-MNIST-like an input is, and probabilities that mean what they say.

Fitted on Fashion-MNIST alone, once per checkpoint:
- the garment score is minus the Mahalanobis distance from the input's L2-normalised embedding
  (`model.embed`) to the nearest class mean, with the class means and one shared covariance taken on the
  training split;
- the score's quantiles on the validation split's garments turn it into a garment-likeness in [0, 1] (the share
  of validation garments less garment-like than the input); below 1 - `KEEP` (0.05, keeping 95% of the
  validation garments) an input is `not_garment`;
- the temperature that divides the logits minimises the validation split's negative log-likelihood
  (temperature scaling), so that "72%" is right about 72% of the time.

The fitted gate is kept beside the checkpoint as `<name>.gate-<hash>.json`, the hash being the checkpoint's
own. It holds plain numbers: the arrays are raw little-endian float64 whose byte count must be exactly what
the network's embedding size asks for, so nothing in the file names code, a path or a size.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error
from tqdm import tqdm

from fmnist.data import CLASS_NAMES, to_unit_float
from fmnist.utils.errors import FmnistError, interruptible
from fmnist.utils.files import file_digest, read_bytes, write_json

KEEP = 0.95  # the share of validation garments the threshold keeps
LEVELS = torch.linspace(0, 1, 1001, dtype=torch.float64)  # the validation scores' quantiles kept: every 0.1%
FORMAT = 1
ECE_BINS = 15
NUMBERS = {"temperature": (1e-3, 1e3), "ece_before": (0, 1), "ece_after": (0, 1)}  # the range each may take
# The largest precision entry or score a gate file may hold: far beyond any fit (a precision is the inverse of a
# covariance of unit vectors, cut off by pinv's tolerance), far below where a distance's few million terms of
# at most this size would overflow float64 and make a score NaN.
MAX_VALUE = 1e200
KEYS = {"fmnist_gate", "checkpoint_sha256", "keep", *NUMBERS, "means", "precision", "quantiles"}


class NotANumber(FmnistError):
    """The network's outputs are NaN or infinite: no gate can be fitted to it."""


@dataclass(frozen=True)
class Gate:
    """A fitted gate: class means (C, D) and shared precision (D, D) of the normalised embedding, the score's
    quantiles on the validation garments (at `LEVELS`), the temperature, and the validation split's
    calibration error before and after it."""

    means: torch.Tensor
    precision: torch.Tensor
    quantiles: torch.Tensor
    temperature: float
    ece_before: float
    ece_after: float

    @property
    def threshold(self) -> float:
        """The score below which an input is not a garment: it keeps `KEEP` of the validation garments."""
        return float(self.quantiles[round((1 - KEEP) * (len(LEVELS) - 1))])

    def garment_likeness(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores as the share of validation garments less garment-like (0: fewer than 0.1% of them)."""
        return torch.from_numpy(np.interp(scores.double().numpy(), self.quantiles.numpy(), LEVELS.numpy())).float()

    def garment_score(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Minus the squared Mahalanobis distance to the nearest class mean: higher is more garment-like."""
        z = F.normalize(embeddings.double(), dim=1)
        zp = z @ self.precision
        distances = (
            (zp * z).sum(1, keepdim=True) - 2 * zp @ self.means.T + ((self.means @ self.precision) * self.means).sum(1)
        )
        return -distances.min(dim=1).values.float()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities: softmax(logits / temperature)."""
        return (logits.double() / self.temperature).softmax(dim=1).float()

    def judge(self, embeddings: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(calibrated probabilities, garment-likeness, not_garment flags) for a batch."""
        scores = self.garment_score(embeddings)
        return self.probabilities(logits), self.garment_likeness(scores), scores < self.threshold


def verdicts(gate: Gate | None, embeddings: torch.Tensor, logits: torch.Tensor):
    """(probabilities, garment-likeness, not_garment flags) of a batch, as `predict` and the web page report them;
    without a gate: plain softmax probabilities and (None, None), no verdict on garment or not."""
    if gate is None:
        return logits.softmax(dim=1), None, None
    return gate.judge(embeddings, logits)


@torch.no_grad()
def network_outputs(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 500, desc: str | None = None):
    """(embeddings (N, D), logits (N, C)) of uint8 or [0, 1] float images (N, 1, 28, 28), `batch_size` at a time."""
    model.eval()
    device = next(model.parameters()).device
    embeddings, logits = [], []
    starts = range(0, len(images), batch_size)
    bar = {"disable": True} if desc is None else {"desc": desc, "disable": None}  # None: a bar on a terminal only
    for start in tqdm(starts, unit="batch", leave=False, **bar):
        batch = images[start : start + batch_size].to(device)
        x = to_unit_float(batch) if batch.dtype == torch.uint8 else batch.float()
        embedding = model.embed(x)
        embeddings.append(embedding.float().flatten(1).cpu())
        logits.append(model.classifier(embedding).float().cpu())
    return torch.cat(embeddings), torch.cat(logits)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the cross-entropy of logits / T (L-BFGS on log T)."""
    logits, log_t = logits.detach().double(), torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    return temperature if math.isfinite(temperature) and 1e-3 <= temperature <= 1e3 else 1.0


def calibration_error(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Expected calibration error (15 equal-width bins, L1), as torchmetrics computes it."""
    return float(multiclass_calibration_error(probs, labels, probs.shape[1], n_bins=ECE_BINS, norm="l1"))


def fit_gate(
    train: tuple[torch.Tensor, torch.Tensor],
    train_labels: torch.Tensor,
    val: tuple[torch.Tensor, torch.Tensor],
    val_labels: torch.Tensor,
) -> Gate:
    """A gate from the network's (embeddings, logits) on the training and validation splits and their labels."""
    z = F.normalize(train[0].double(), dim=1)
    classes = int(train[1].shape[1])
    if not all(bool(t.isfinite().all()) for t in (*train, *val)):
        raise NotANumber(
            "the network's outputs on Fashion-MNIST are not numbers (NaN or inf): the checkpoint's weights are broken"
        )
    missing = [c for c in range(classes) if int((train_labels == c).sum()) < 2]
    if missing or len(val_labels) < 20:
        raise FmnistError("the garment gate needs training images of every class and at least 20 validation images")
    means = torch.stack([z[train_labels == c].mean(dim=0) for c in range(classes)])
    centred = z - means[train_labels]
    covariance = centred.T @ centred / len(centred)
    precision = torch.linalg.pinv(covariance, hermitian=True)
    temperature = fit_temperature(val[1], val_labels)
    gate = Gate(means, precision, LEVELS, temperature, 0.0, 0.0)
    quantiles = torch.quantile(gate.garment_score(val[0]).double(), LEVELS)
    return Gate(
        means,
        precision,
        quantiles,
        temperature,
        calibration_error(val[1].softmax(dim=1), val_labels),
        calibration_error(gate.probabilities(val[1]), val_labels),
    )


def checkpoint_digest(path: Path) -> str:
    """The checkpoint file's SHA-256 (hex). A checkpoint swapped for a FIFO since it was loaded is one FmnistError,
    not a read that waits forever."""
    try:
        return file_digest(path)
    except ValueError:
        raise FmnistError(f"{path} is no longer a regular file: it was replaced while fmnist read it") from None


def gate_path(ckpt: Path, digest: str) -> Path:
    """Where the gate of the checkpoint with this digest is kept: beside it, named for both."""
    return ckpt.with_name(f"{ckpt.stem}.gate-{digest[:16]}.json")


def _encode(array: torch.Tensor) -> str:
    return base64.b64encode(array.double().contiguous().numpy().astype("<f8").tobytes()).decode("ascii")


def _decode(text: object, shape: tuple[int, ...], bound: float) -> torch.Tensor:
    size = math.prod(shape) * 8
    if not isinstance(text, str) or len(text) != 4 * math.ceil(size / 3):  # checked before anything is decoded
        raise ValueError(f"an array that is not {'x'.join(map(str, shape))} float64 values")
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("an array that is not base64") from None
    values = np.frombuffer(data, dtype="<f8")
    if values.size * 8 != size or not (np.abs(values) <= bound).all():  # NaN fails the comparison too
        raise ValueError(f"an array with values that are not numbers from -{bound:g} to {bound:g}")
    return torch.from_numpy(values.astype(np.float64).reshape(shape))


def gate_json(gate: Gate, digest: str) -> dict:
    """The gate as the plain values its file holds."""
    return {
        "fmnist_gate": FORMAT,
        "checkpoint_sha256": digest,
        "keep": KEEP,
        **{name: getattr(gate, name) for name in NUMBERS},
        "means": _encode(gate.means),
        "precision": _encode(gate.precision),
        "quantiles": _encode(gate.quantiles),
    }


def gate_from_json(data: object, digest: str, classes: int, dim: int) -> Gate:
    """The gate in `data`, checked against this checkpoint's digest and network; ValueError says why not."""
    if not isinstance(data, dict) or set(data) != KEYS or data["fmnist_gate"] != FORMAT:
        raise ValueError("not a gate file of this fmnist release")
    if data["checkpoint_sha256"] != digest:
        raise ValueError("fitted for another checkpoint")
    if data["keep"] != KEEP:
        raise ValueError(f"its threshold keeps {repr(data['keep'])[:40]} of the garments, not {KEEP}")
    for name, (low, high) in NUMBERS.items():
        # compared, never converted: an integer of a thousand digits is out of range, not an OverflowError
        if type(data[name]) not in (int, float) or not low <= data[name] <= high:
            raise ValueError(f"its {name} {repr(data[name])[:40]} is not a number from {low:g} to {high:g}")
    quantiles = _decode(data["quantiles"], tuple(LEVELS.shape), MAX_VALUE)
    if bool((quantiles.diff() < 0).any()):
        raise ValueError("quantiles that are not in increasing order")
    # the means of unit vectors lie in [-1, 1] (and a little rounding)
    means, precision = (
        _decode(data["means"], (classes, dim), 1 + 1e-6),
        _decode(data["precision"], (dim, dim), MAX_VALUE),
    )
    return Gate(means, precision, quantiles, **{name: float(data[name]) for name in NUMBERS})


def read_gate(path: Path, digest: str, classes: int, dim: int) -> Gate:
    """The gate kept at `path`; ValueError (with the reason) for a file that is not this checkpoint's gate."""
    arrays = dim * (dim + classes) + len(LEVELS)
    limit = 4 * math.ceil(8 * arrays / 3) + 4096  # the arrays' base64 size, and the rest
    try:
        data = json.loads(read_bytes(path, limit, nofollow=True))
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError("a link, which fmnist never follows") from None
        raise
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as error:  # not UTF-8, not JSON
        raise ValueError(f"not JSON ({str(error)[:80]})") from None
    return gate_from_json(data, digest, classes, dim)


def embedding_size(model: torch.nn.Module) -> int:
    """The width of the network's embedding (one blank image through `model.embed`)."""
    model.eval()
    with torch.no_grad():
        blank = torch.zeros(1, 1, 28, 28, device=next(model.parameters()).device)
        return int(model.embed(blank).flatten(1).shape[1])


def fit_for(model: torch.nn.Module, datamodule) -> Gate:
    """Fit the gate of `model` on `datamodule`'s training and validation splits (one pass over each)."""
    datamodule.setup("fit")
    train, val = datamodule.train_set, datamodule.val_set
    if val is None or len(val) == 0:
        raise FmnistError("the garment gate needs a validation split: data.val_fraction must leave one")
    return fit_gate(
        network_outputs(model, train.images, desc="garment gate: training split"),
        train.labels,
        network_outputs(model, val.images, desc="garment gate: validation split"),
        val.labels,
    )


def gate_for(model: torch.nn.Module, ckpt_path: str | Path, datamodule) -> Gate:
    """The checkpoint's gate: read from beside it when there, else fitted (seconds on a CPU) and kept.

    A file at the gate's name that is not this checkpoint's gate is left as it is: the gate is fitted again
    and not saved over it. A folder that cannot be written to only costs the saving. A network that cannot
    be fitted a gate (its outputs are NaN) is an FmnistError."""
    ckpt = Path(ckpt_path)
    digest = checkpoint_digest(ckpt)
    path = gate_path(ckpt, digest)
    classes, dim = len(CLASS_NAMES), embedding_size(model)
    if os.path.lexists(path):
        try:
            return read_gate(path, digest, classes, dim)
        except (OSError, ValueError) as error:
            print(f"note: {path} is not this checkpoint's garment gate ({error}): fitting it again, not saving it")
            with interruptible("fitting the garment gate", "nothing was kept"):
                return fit_for(model, datamodule)
    print(f"fitting the garment gate of {ckpt.name} on Fashion-MNIST's training and validation splits (once)")
    with interruptible("fitting the garment gate", "nothing was kept; it is fitted from the start next time"):
        gate = fit_for(model, datamodule)
    try:
        write_json(path, gate_json(gate, digest))
    except FmnistError as error:  # write_json's OSError: a read-only folder, a folder that is a link, a long name
        print(f"note: the garment gate was not kept, it will be fitted again next time: {error}")
    return gate
