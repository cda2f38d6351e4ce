"""The shared LightningModule: steps, metrics and optimizer for the three study networks.

A subclass only builds `self.features` (image -> penultimate activations) and `self.classifier`
(penultimate -> logits). The softmax of the Keras models is folded into the loss, since
`CrossEntropyLoss` on logits is exactly Keras's softmax + categorical cross-entropy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fmnist.data.datamodule import epoch_batches
from fmnist.data.idx import CLASS_NAMES
from fmnist.models.graphed import GraphedTrainStep
from fmnist.models.trust import optimizer_class
from fmnist.utils.errors import FmnistError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
TRAIN_SUMS = ("train_loss_sum", "train_correct", "train_seen")  # an epoch's training figures, on the device


def optimizer_spec(optimizer: OptimizerFactory | dict | DictConfig) -> dict[str, Any]:
    """A plain `{"_target_": "module.Class", **kwargs}` dict describing an optimizer factory."""
    if isinstance(optimizer, DictConfig):
        optimizer = OmegaConf.to_container(optimizer, resolve=True)
    if isinstance(optimizer, dict):
        return {k: v for k, v in optimizer.items() if k != "_partial_"}
    if isinstance(optimizer, functools.partial) and not optimizer.args:
        target = f"{optimizer.func.__module__}.{optimizer.func.__qualname__}"
        return {"_target_": target, **optimizer.keywords}
    raise TypeError(f"optimizer must be a functools.partial or a dict with _target_, not {optimizer!r}")


def optimizer_factory(spec: dict[str, Any], where: str = "model.optimizer") -> OptimizerFactory:
    """The callable `params -> Optimizer` that a spec from `optimizer_spec` describes: an optimizer of
    `fmnist.models.trust.OPTIMIZERS` with plain settings, never a class imported from the spec's path."""
    cls, kwargs = optimizer_class(spec, where)
    return functools.partial(cls, **kwargs)


def valid_triangle(triangle: Sequence[float]) -> bool:
    """The ranges of `lr_triangle`: start factor in (0, 1], peak in (0, 1) (a share of the steps), end in [0, 1]."""
    start, peak, end = triangle
    return 0 < start <= 1 and 0 < peak < 1 and 0 <= end <= 1


class FashionClassifier(L.LightningModule):
    """Base class: cross-entropy on logits, torchmetrics accuracy, optimizer from a partial."""

    default_optimizer: dict[str, Any] = {"_target_": "torch.optim.Adam", "lr": 1e-3}
    features: nn.Module
    classifier: nn.Module

    def __init__(
        self,
        optimizer: OptimizerFactory | dict | None = None,
        fast_step: bool = False,
        label_smoothing: float = 0.0,
        lr_schedule: bool = False,
        lr_triangle: Sequence[float] = (0.2, 0.25, 0.05),
        tta: bool = False,
    ):
        """`fast_step`: the fast path (trainer=gpu_fast) — batches come in chunks (data.batches_per_step)
        and each step's forward and backward replay a CUDA graph (eagerly off CUDA).
        `label_smoothing`: of the training loss only (validation and test losses stay plain cross-entropy).
        `lr_schedule`: a triangular learning rate per optimizer step, `lr_triangle` = (start factor, peak
        position as a fraction of the steps, end factor): from lr x start up to lr, then down to lr x end.
        `tta`: the test also reports `test/acc_tta`, the accuracy of the logits averaged with those of the
        horizontally flipped images, next to the plain `test/acc`."""
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), not {label_smoothing}")
        if not valid_triangle(lr_triangle):
            raise ValueError(f"lr_triangle must be [start in (0, 1], peak in (0, 1), end in [0, 1]], not {lr_triangle}")
        # Checkpoints keep plain values only: the optimizer is stored as its spec, not a partial.
        self.save_hyperparameters(ignore=["optimizer"])
        self.fast_step = fast_step
        self.automatic_optimization = not fast_step
        self._graphed_step: GraphedTrainStep | None = None
        # A stop request (SaveOnInterrupt) sets stop_in_chunk: the fast path's step then ends its chunk after
        # the batch it is on, and chunk_done says how many of the chunk's batches it trained.
        self.stop_in_chunk = False
        self.chunk_done: int | None = None
        self.hparams["optimizer"] = optimizer_spec(optimizer or self.default_optimizer)
        self.class_names = CLASS_NAMES
        num_classes = len(CLASS_NAMES)
        # Training loss and accuracy are plain sums on the device, updated in place: no host sync per
        # step, a fraction of a metric object's per-call cost, and fixed addresses that the fast path's
        # CUDA graph can update (a torchmetrics reset() allocates new state tensors).
        for name, dtype in zip(TRAIN_SUMS, (torch.float64, torch.int64, torch.int64), strict=False):
            self.register_buffer(name, torch.zeros((), dtype=dtype), persistent=False)
        # nan_strategy="disable": a NaN loss must reach the epoch mean (and the check would sync per step). It
        # also drops update()'s weight (torchmetrics 1.9), so the steps pass each image's loss, not a batch mean.
        self.val_loss, self.test_loss = MeanMetric(nan_strategy="disable"), MeanMetric(nan_strategy="disable")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc_tta = MulticlassAccuracy(num_classes, average="micro") if tta else None
        self.test_f1 = MulticlassF1Score(num_classes, average=None)
        self.val_acc_best = MaxMetric()
        self.epochs_trained: int | None = None  # the test's x value when the trainer did not fit (a resume's test)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 10) for images (B, 1, 28, 28) in [0, 1]."""
        return self.classifier(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations: what the network groups garments by."""
        return self.features(x)

    def tta_logits(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Flip test-time augmentation: the logits of `x` (given, or computed) plus those of its mirror image."""
        return (self(x) if logits is None else logits) + self(x.flip(3))

    def _step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each image's cross-entropy (their mean over an epoch is its loss), the logits and the labels."""
        images, labels = batch
        logits = self(images)
        return F.cross_entropy(logits, labels, reduction="none"), logits, labels

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The batch's cross-entropy, with its loss and correct answers added to the epoch's sums."""
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.get("label_smoothing", 0.0))
        self.train_loss_sum.add_(loss.detach() * labels.shape[0])
        self.train_correct.add_((logits.argmax(dim=1) == labels).sum())
        self.train_seen.add_(labels.shape[0])
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.fast_step:
            return self._fast_training_step(batch)
        return self.training_loss(*batch)

    def _fast_training_step(self, batches) -> torch.Tensor:
        """Manual optimization over a chunk of batches: graph replay for forward/backward, then the
        optimizer's own (multi-tensor) step through Lightning, which counts it in `global_step`.
        Returns the chunk's losses, one per batch trained, for the divergence check: fewer when a stop
        request (`stop_in_chunk`) ends the chunk early, which `chunk_done` then counts."""
        batches = batches if isinstance(batches, list) else [batches]
        self.chunk_done = None
        optimizer = self.optimizers()
        losses = torch.empty(len(batches), device=self.device)
        scheduler = self.lr_schedulers()
        for index, (images, labels) in enumerate(batches):
            losses[index] = self._graphed_step(images, labels)
            optimizer.step()
            # Under trainer.precision=bf16-mixed (CPU) one autocast spans the chunk: its cached bf16
            # copies of the weights would outlive this step's update.
            torch.clear_autocast_cache()
            if scheduler is not None:  # manual optimization: Lightning leaves the schedule to the step
                scheduler.step()
            if self.stop_in_chunk and index + 1 < len(batches):
                self.chunk_done = index + 1
                return losses[: index + 1]
        return losses

    def running_train_figures(self) -> dict[str, torch.Tensor]:
        """The epoch's training loss and accuracy so far (on the device: reading them is a host sync)."""
        seen = self.train_seen.clamp(min=1)
        return {"train/loss": (self.train_loss_sum / seen).float(), "train/acc": (self.train_correct / seen).float()}

    def on_train_epoch_end(self) -> None:
        # Logged once per epoch, not from each step: Lightning's bookkeeping of a logged value costs
        # about a millisecond per call, as much as a whole SimpleRNN step on the CPU.
        for name, value in self.running_train_figures().items():
            self.log(name, value, prog_bar=True, sync_dist=True)
        self._log_epoch_as_step()
        for name in TRAIN_SUMS:
            getattr(self, name).zero_()

    def _log_epoch_as_step(self, epochs_done: int | None = None) -> None:
        # Lightning plots a logged "step" as the x value: TensorBoard's curves then count epochs from 1,
        # and the test figures sit at the run's last epoch.
        self.log("step", float(self.current_epoch + 1 if epochs_done is None else epochs_done))

    def on_train_start(self) -> None:
        if self.fast_step:
            self._graphed_step = GraphedTrainStep(self.training_loss, self)

    def on_train_end(self) -> None:
        self._graphed_step = None  # frees the graph and its memory pool

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, logits, labels = self._step(batch)
        self.val_loss.update(loss)  # per image: a smaller last batch weighs what its images weigh
        self.val_acc.update(logits, labels)
        n = labels.shape[0]
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return  # the sanity check's figures are no epoch's: they never count as the best
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)
        self._log_epoch_as_step()

    def test_step(self, batch, batch_idx: int) -> None:
        images = batch[0]
        loss, logits, labels = self._step(batch)
        self.test_loss.update(loss)
        self.test_acc.update(logits, labels)
        self.test_f1.update(logits, labels)
        n = labels.shape[0]
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True, batch_size=n)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True, batch_size=n)
        if self.test_acc_tta is not None:
            self.test_acc_tta.update(self.tta_logits(images, logits), labels)
            self.log("test/acc_tta", self.test_acc_tta, on_step=False, on_epoch=True, batch_size=n)

    def on_test_epoch_end(self) -> None:
        per_class = self.test_f1.compute()
        self.log("test/macro_f1", per_class.mean(), sync_dist=True)
        for name, value in zip(self.class_names, per_class, strict=False):
            self.log(f"test/f1/{name}", value, sync_dist=True)
        # after fitting: the number of epochs trained
        self._log_epoch_as_step(self.current_epoch if self.epochs_trained is None else self.epochs_trained)
        self.test_f1.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lets `fmnist.evaluate` rebuild the right class from the checkpoint alone: the class's name is
        # its key in the registry `fmnist.models.MODELS`.
        checkpoint["fmnist_model"] = type(self).__name__
        # The running figures, kept out of the state_dict: a run resumed in mid-epoch ends the epoch
        # with the same training loss, accuracy and best val/acc.
        checkpoint["fmnist_running"] = {
            "val_acc_best": dict(self.val_acc_best.metric_state),
            **{name: getattr(self, name).clone() for name in TRAIN_SUMS},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        running = checkpoint.get("fmnist_running") or {}
        best = running.get("val_acc_best", {}) if isinstance(running, dict) else None
        sums = {k: v for k, v in running.items() if k != "val_acc_best"} if isinstance(running, dict) else None
        # Only the scalars on_save_checkpoint writes: a file never picks which attribute is set.
        if not (
            isinstance(best, dict)
            and best.keys() <= self.val_acc_best.metric_state.keys()
            and sums.keys() <= set(TRAIN_SUMS)
            and all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in (*best.values(), *sums.values()))
        ):
            path = self._trainer.ckpt_path if self._trainer is not None else None
            raise FmnistError(
                f"{path or 'the checkpoint'} is not an fmnist checkpoint: its "
                "fmnist_running holds other entries than the running figures fmnist saves"
            )
        for key, value in best.items():
            setattr(self.val_acc_best, key, value.to(self.val_acc_best.device))
        for name, value in sums.items():
            getattr(self, name).copy_(value)  # in place: a captured graph keeps these addresses

    def configure_optimizers(self):
        # Frozen parameters (the recurrent layers' zero bias_hh) are left out of the optimizer.
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = optimizer_factory(self.hparams["optimizer"])(trainable)
        if not self.hparams.get("lr_schedule"):
            return optimizer
        schedule = triangular_schedule(optimizer, optimizer_steps(self.trainer), *self.hparams["lr_triangle"])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def optimizer_steps(trainer: L.Trainer) -> int:
    """How many optimizer steps the fit makes: batches per epoch x epochs (or max_steps), on the fast path
    too, where a Lightning step holds data.batches_per_step batches and the epoch's last chunk fewer."""
    chunks = trainer.estimated_stepping_batches  # sets up the training data; counts Lightning steps
    datamodule = trainer.datamodule
    per_chunk = getattr(datamodule, "batches_per_step", 1) or 1
    train_set = getattr(datamodule, "train_set", None)
    if per_chunk == 1 or train_set is None:
        return max(1, int(chunks))
    per_epoch = epoch_batches(datamodule, int(trainer.num_training_batches), trainer.world_size)
    epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
    limits = [n for n in (epochs and per_epoch * epochs, trainer.max_steps if trainer.max_steps > 0 else None) if n]
    if not limits:
        raise FmnistError("model.lr_schedule=true needs a last step: set trainer.max_epochs or trainer.max_steps")
    return max(1, min(limits))


def triangular_schedule(
    optimizer: torch.optim.Optimizer, steps: int, start: float, peak: float, end: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """lr x `start` at the first of `steps` optimizer steps, rising linearly to lr at step `peak` x `steps`,
    then falling linearly to lr x `end` at the last step (and staying there): torch's LinearLR twice."""
    up = max(1, round(peak * (steps - 1)))
    down = max(1, steps - 1 - up)
    linear = torch.optim.lr_scheduler.LinearLR
    return torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [linear(optimizer, start, 1.0, total_iters=up), linear(optimizer, 1.0, end, total_iters=down)],
        milestones=[up],
    )
