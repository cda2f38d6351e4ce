"""Fashion-MNIST: finding and checking the IDX files (`idx.py`) and the in-memory DataModule (`datamodule.py`)."""

from fmnist.data.datamodule import FashionMNISTDataModule, to_unit_float, validation_size
from fmnist.data.idx import CLASS_NAMES, count_images, ensure_raw_files, load_split

__all__ = [
    "CLASS_NAMES",
    "FashionMNISTDataModule",
    "count_images",
    "ensure_raw_files",
    "load_split",
    "to_unit_float",
    "validation_size",
]
