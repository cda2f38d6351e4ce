"""Fashion-MNIST as a LightningDataModule that keeps each split in memory as one uint8 tensor.

torchvision parses the IDX files; batches are sliced from the in-memory tensors (no per-image PIL
path) and turned into float32 in [0, 1] only after they reach the device.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import extract_archive

from fmnist.errors import FmnistError

CLASS_NAMES = tuple(FashionMNIST.classes)
RAW_FILES = tuple(os.path.splitext(os.path.basename(url))[0] for url, _ in FashionMNIST.resources)
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


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


def keep_batch(batch):
    """collate_fn for InMemoryImages: the batch is already stacked."""
    return batch


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 to float32 in [0, 1], as the study's `x / 255`."""
    return images.float().div_(255.0)


def raw_folder(root: str | os.PathLike) -> Path:
    """The folder torchvision's FashionMNIST reads its IDX files from."""
    return Path(root) / "FashionMNIST" / "raw"


def ensure_raw_files(root: str | os.PathLike, search_dirs: Sequence[str] = (DEBIAN_DIR,),
                     download: bool = False) -> Path:
    """Make the four IDX files present in `<root>/FashionMNIST/raw/`, or raise one clear FmnistError.

    Order: already there; the `.gz` files in one of `search_dirs` (decompressed into place; their
    MD5 is not checked since Debian recompressed them); torchvision's download if `download`.
    """
    raw = raw_folder(root)
    if all((raw / name).exists() for name in RAW_FILES):
        return raw
    for folder in search_dirs:
        folder = Path(folder)
        if all((folder / f"{name}.gz").exists() or (folder / name).exists() for name in RAW_FILES):
            raw.mkdir(parents=True, exist_ok=True)
            # Extract beside the target and rename: DDP ranks may place the same files at once.
            with tempfile.TemporaryDirectory(dir=raw) as staging:
                for name in RAW_FILES:
                    if (folder / name).exists():
                        shutil.copyfile(folder / name, Path(staging) / name)
                    else:
                        extract_archive(str(folder / f"{name}.gz"), staging)
                    os.replace(Path(staging) / name, raw / name)
            return raw
    searched = ", ".join([str(raw), *map(str, search_dirs)])
    if download:
        try:
            FashionMNIST(str(root), train=True, download=True)
            FashionMNIST(str(root), train=False, download=True)
            return raw
        except Exception as error:  # noqa: BLE001 - any network failure ends in the same advice
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise FmnistError(
                f"Fashion-MNIST not found in {searched} and the download failed ({reason}). "
                "Fix: `apt-get install dataset-fashion-mnist`, or put the four IDX files in "
                f"{raw}.") from None
    raise FmnistError(
        f"Fashion-MNIST not found in {searched}. Fix: `apt-get install dataset-fashion-mnist` "
        "(Debian), or add `data.download=true` to fetch it from the internet.")


def load_split(root: str | os.PathLike, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One official split as (uint8 images (N, 1, 28, 28), int64 labels (N,))."""
    dataset = FashionMNIST(str(root), train=train, download=False)
    return dataset.data.unsqueeze(1).contiguous(), dataset.targets.long()


class FashionMNISTDataModule(L.LightningDataModule):
    """Train / validation / test splits of Fashion-MNIST.

    Validation is the LAST `val_fraction` of the 60,000 training images, taken before any
    shuffling, exactly like Keras `model.fit(validation_split=...)`; test is the official 10,000.
    """

    def __init__(self, root: str = "data", batch_size: int = 100, val_fraction: float = 0.1,
                 download: bool = False, search_dirs: Sequence[str] = (DEBIAN_DIR,),
                 num_workers: int = 0, eval_batch_size: int | None = None):
        super().__init__()
        self.root = root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction = val_fraction
        self.download = download
        self.search_dirs = tuple(search_dirs)
        self.num_workers = num_workers
        self.class_names = CLASS_NAMES
        self.train_set = self.val_set = self.test_set = None

    def prepare_data(self) -> None:
        ensure_raw_files(self.root, self.search_dirs, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            ensure_raw_files(self.root, self.search_dirs, self.download)
            images, labels = load_split(self.root, train=True)
            n_val = int(round(len(labels) * self.val_fraction))
            n_train = len(labels) - n_val
            self.train_set = InMemoryImages(images[:n_train], labels[:n_train])
            self.val_set = InMemoryImages(images[n_train:], labels[n_train:])
            self.test_set = InMemoryImages(*load_split(self.root, train=False))

    def _loader(self, dataset: InMemoryImages, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=keep_batch,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        return to_unit_float(images), labels
