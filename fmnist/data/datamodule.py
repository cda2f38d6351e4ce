"""Fashion-MNIST as a LightningDataModule that keeps each split in memory as one uint8 tensor.

fmnist.data.idx checks and reads the IDX files; batches are sliced from the in-memory tensors (no per-image PIL
path) and turned into float32 in [0, 1] only after they reach the device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fmnist.data.augment import build_augmentation
from fmnist.data.idx import CLASS_NAMES, DEBIAN_DIR, ensure_raw_files, load_split
from fmnist.utils.errors import FmnistError
from fmnist.utils.rng import is_random_state, random_state, set_random_state


class InMemoryImages(Dataset):
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64, fetched a whole batch at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]):
        # DataLoader calls this with a batch's indices: one gather instead of B single lookups.
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


class EpochShuffle(DistributedSampler):
    """A random order of the dataset's indices that depends only on (seed, epoch); under DDP each process
    takes every `num_replicas`-th index of it from its `rank` on, as torch's DistributedSampler does.

    Lightning calls `set_epoch` at each epoch start, so a run resumed in mid-epoch replays the
    interrupted epoch's order without any saved state. Being a DistributedSampler (world size and rank from
    torch.distributed once initialised, as torchvision's RASampler), it is used as it is under DDP: Lightning
    would otherwise wrap it in its DistributedSamplerWrapper, which until Lightning's PR 21456 (December 2025;
    pyproject allows older releases) did not pass `set_epoch` on, so every epoch had the same order.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int | None = None, rank: int | None = None):
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if distributed else 1
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)

    def __iter__(self):
        # Spread apart so that seed s, epoch e+1 and seed s+1, epoch e get different orders.
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        if len(order) < self.total_size:  # as DistributedSampler: repeat the first indices so that shards are equal
            order = (order * math.ceil(self.total_size / max(1, len(order))))[: self.total_size]
        return iter(order[self.rank : self.total_size : self.num_replicas])


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning checkpoints in mid-epoch (it saves `state_dict()` of a training
    loader that has one): it counts the batches handed out this epoch, and a restored one skips that
    many at its next `iter()`. With EpochShuffle those are exactly the batches already trained on.
    """

    _taken = 0  # batches handed out in the current epoch
    _skip = 0  # batches to skip at the next iter(), after a restore

    def __iter__(self):
        iterator = super().__iter__()
        skip, self._skip, self._taken = self._skip, 0, 0
        return self._counted(iterator, skip)

    def _counted(self, iterator, skip: int):
        for index, batch in enumerate(iterator):
            self._taken = index + 1
            if index >= skip:
                yield batch

    def state_dict(self) -> dict:
        return {"batches": self._taken, "epoch": getattr(self.sampler, "epoch", 0)}

    def hand_back(self) -> None:
        """Count the last batch handed out as not taken: a restore hands it out again (a step cut it short)."""
        self._taken -= 1

    def load_state_dict(self, state_dict: dict) -> None:
        self._skip = state_dict["batches"]
        # With loader workers the order is drawn at iter(), before Lightning sets the epoch.
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(state_dict["epoch"])


def keep_batch(batch):
    """collate_fn for InMemoryImages: the batch is already stacked."""
    return batch


def split_batches(chunk, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """collate_fn for the fast path: one gathered chunk cut into consecutive training batches."""
    images, labels = chunk
    return list(zip(images.split(batch_size), labels.split(batch_size), strict=False))


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 to float32 in [0, 1], as the study's `x / 255`."""
    return images.float().div_(255.0)


def epoch_batches(datamodule, steps: int, world_size: int = 1) -> int:
    """Training batches (of data.batch_size) one process takes in an epoch of `steps` Lightning steps: on the
    fast path a step is a chunk of data.batches_per_step batches, and the epoch's last chunk holds what is
    left of the split (of its share of it: DDP splits each epoch among `world_size` processes)."""
    batches = steps * (getattr(datamodule, "batches_per_step", 1) or 1)
    split = len(getattr(datamodule, "train_set", None) or ())
    batch = getattr(datamodule, "batch_size", None)
    return min(batches, math.ceil(split / (batch * world_size))) if split and batch else batches


def validation_size(n_images: int, val_fraction: float) -> int:
    """How many of the training split's last images are held out for validation (Keras's validation_split)."""
    return int(round(n_images * val_fraction))


class FashionMNISTDataModule(L.LightningDataModule):
    """Train / validation / test splits of Fashion-MNIST.

    Validation is the LAST `val_fraction` of the 60,000 training images, taken before any
    shuffling, exactly like Keras `model.fit(validation_split=...)`; test is the official 10,000.
    """

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 100,
        val_fraction: float = 0.1,
        download: bool = False,
        search_dirs: Sequence[str] = (DEBIAN_DIR,),
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        device_resident: bool = False,
        batches_per_step: int = 1,
        seed: int | None = None,
        augment: Mapping[str, float] | None = None,
    ):
        """`device_resident` keeps the splits on the training device (still uint8); `batches_per_step` > 1
        hands the training step a list of that many consecutive batches (the fast path, trainer=gpu_fast).
        `seed` fixes the training order of each epoch (None: drawn from torch's generator).
        `augment`: the training batches' augmentation (fmnist.data.augment, fmnist/conf/augment/); None: none."""
        super().__init__()
        self.root = root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction = val_fraction
        self.download = download
        self.search_dirs = tuple(search_dirs)
        self.num_workers = num_workers
        self.device_resident = device_resident
        self.batches_per_step = batches_per_step
        self.seed = seed
        self.class_names = CLASS_NAMES
        self.augment = build_augmentation(**dict(augment or {}))
        self.train_set = self.val_set = self.test_set = None
        self._chunk_rng: dict | None = None  # the random state before the last chunk's augmentation
        self._cut: dict | None = None  # the last chunk, cut short by a stop: for the checkpoint
        self._resume_cut: dict | None = None  # a cut chunk from the checkpoint: what the next chunk skips

    def prepare_data(self) -> None:
        ensure_raw_files(self.root, self.search_dirs, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            ensure_raw_files(self.root, self.search_dirs, self.download)
            images, labels = load_split(self.root, train=True)
            n_val = validation_size(len(labels), self.val_fraction)
            n_train = len(labels) - n_val
            self.train_set = InMemoryImages(images[:n_train], labels[:n_train])
            self.val_set = InMemoryImages(images[n_train:], labels[n_train:])
            self.test_set = InMemoryImages(*load_split(self.root, train=False))
        if self.device_resident and self.trainer is not None:
            device = self.trainer.strategy.root_device
            for split in (self.train_set, self.val_set, self.test_set):
                split.images, split.labels = split.images.to(device), split.labels.to(device)

    def _loader(self, dataset: InMemoryImages, batch_size: int, shuffle: bool, collate_fn=keep_batch) -> DataLoader:
        options = dict(
            batch_size=batch_size,
            collate_fn=collate_fn,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
        if not shuffle:
            return DataLoader(dataset, **options)
        # An order fixed by (seed, epoch) and a loader that Lightning checkpoints in mid-epoch: an
        # interrupted run resumes exactly. The loader's own generator (worker seeds) leaves torch's
        # global one, which dropout draws from, alone.
        seed = self.seed if self.seed is not None else int(torch.randint(2**32, ()).item())
        return ResumableLoader(
            dataset, sampler=EpochShuffle(dataset, seed), generator=torch.Generator().manual_seed(seed), **options
        )

    def train_dataloader(self) -> DataLoader:
        if self.batches_per_step > 1:
            # Shuffled by the same sampler as the default path, so the CPU test can compare the two.
            return self._loader(
                self.train_set,
                self.batch_size * self.batches_per_step,
                shuffle=True,
                collate_fn=functools.partial(split_batches, batch_size=self.batch_size),
            )
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        training = self.trainer is not None and self.trainer.training
        augment = self.augment if training else None
        if not isinstance(batch, list):
            return self._prepared(*batch, augment)
        resume, self._resume_cut = (self._resume_cut, None) if training else (None, self._resume_cut)
        if augment is not None:
            self._chunk_rng = random_state()
        if resume is None:
            return [self._prepared(images, labels, augment) for images, labels in batch]
        # The chunk that a stop cut short: augmented from the random state its first run drew from (the
        # state restored for training is where its dropout stopped), then only the batches not yet trained.
        drawn = random_state()
        if augment is not None and resume["chunk_rng"] is not None:
            set_random_state(resume["chunk_rng"])
        prepared = [self._prepared(images, labels, augment) for images, labels in batch]
        set_random_state(drawn)
        return prepared[resume["chunk_done"] :]

    def cut_chunk(self, done: int) -> None:
        """The training chunk now in its step ended after `done` of its batches (a stop): the checkpoint
        records that, and a run restored from it trains that chunk's other batches first."""
        self._cut = {"chunk_done": done, "chunk_rng": self._chunk_rng if self.augment is not None else None}
        loader = self.trainer.train_dataloader if self.trainer is not None else None
        if isinstance(loader, ResumableLoader):
            loader.hand_back()

    def state_dict(self) -> dict:
        return dict(self._cut) if self._cut is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        done, rng = state_dict.get("chunk_done"), state_dict.get("chunk_rng")
        # Only the values cut_chunk saves: a whole number of batches within a chunk, a random state or None.
        if not (
            type(done) is int
            and 0 < done < self.batches_per_step
            and (rng is None or is_random_state(rng))
            and state_dict.keys() <= {"chunk_done", "chunk_rng"}
        ):
            raise FmnistError(
                f"the checkpoint's data module state is not fmnist's: chunk_done={done!r} must be a whole "
                f"number from 1 to data.batches_per_step - 1 = {self.batches_per_step - 1}"
            )
        self._resume_cut = {"chunk_done": done, "chunk_rng": rng}

    @staticmethod
    def _prepared(images: torch.Tensor, labels: torch.Tensor, augment: torch.nn.Module | None):
        images = to_unit_float(images)
        return (images if augment is None else augment(images)), labels
