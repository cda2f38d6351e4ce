"""The data module on a tiny IDX dataset written by the test: loading, splits, placement, errors."""

import numpy as np
import pytest
import torch

from fmnist.data.datamodule import FashionMNISTDataModule
from fmnist.data.idx import ensure_raw_files, raw_folder
from fmnist.utils.errors import FmnistError
from tests.conftest import N_TEST, N_TRAIN, tiny_split, write_tiny_fashion_mnist


def test_splits_sizes_dtypes_and_last_fraction_validation(tiny_root):
    dm = FashionMNISTDataModule(root=str(tiny_root), batch_size=32, val_fraction=0.25, search_dirs=[])
    dm.prepare_data()
    dm.setup("fit")
    n_val = N_TRAIN // 4
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (N_TRAIN - n_val, n_val, N_TEST)
    images, labels = tiny_split(N_TRAIN, 0)
    # Keras validation_split: the LAST fraction of the training arrays, before any shuffling
    assert np.array_equal(dm.val_set.images[:, 0].numpy(), images[-n_val:])
    assert np.array_equal(dm.val_set.labels.numpy(), labels[-n_val:])
    assert np.array_equal(dm.train_set.images[:, 0].numpy(), images[:-n_val])
    assert dm.train_set.images.dtype == torch.uint8 and dm.train_set.images.shape[1:] == (1, 28, 28)


def test_batches_stay_uint8_until_transfer_then_become_unit_floats(tiny_root):
    dm = FashionMNISTDataModule(root=str(tiny_root), batch_size=32, search_dirs=[])
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (32, 1, 28, 28) and labels.dtype == torch.int64
    floats, same_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert floats.dtype == torch.float32 and floats.max() == 1.0 and floats.min() >= 0.0
    assert torch.equal(floats, images.float() / 255)
    assert torch.equal(same_labels, labels)


def test_training_loader_shuffles_and_covers_every_image(tiny_root):
    dm = FashionMNISTDataModule(root=str(tiny_root), batch_size=64, search_dirs=[])
    dm.setup("fit")
    seen = torch.cat([labels for _, labels in dm.train_dataloader()])
    assert len(seen) == len(dm.train_set)
    assert torch.equal(seen.sort().values, dm.train_set.labels.sort().values)
    assert not torch.equal(seen, dm.train_set.labels)


def test_gz_files_from_a_search_dir_are_placed_where_torchvision_looks(tmp_path):
    debian = write_tiny_fashion_mnist(tmp_path / "debian", gz=True)
    root = tmp_path / "root"
    raw = ensure_raw_files(root, search_dirs=[str(debian)])
    assert raw == raw_folder(root)
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    )
    dm = FashionMNISTDataModule(root=str(root), search_dirs=[])
    dm.setup()
    assert len(dm.test_set) == N_TEST


def test_missing_data_error_names_the_folders_and_both_fixes(tmp_path):
    with pytest.raises(FmnistError) as info:
        ensure_raw_files(tmp_path / "nothing", search_dirs=[str(tmp_path / "nowhere")])
    message = str(info.value)
    assert str(raw_folder(tmp_path / "nothing")) in message and str(tmp_path / "nowhere") in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.download=true" in message
    assert "\n" not in message


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as mnist

    monkeypatch.setattr(mnist.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(FmnistError, match="download failed.*apt-get install dataset-fashion-mnist"):
        ensure_raw_files(tmp_path, search_dirs=[], download=True)
