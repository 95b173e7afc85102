import gzip
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import ROOT, write_cifar, write_fmnist

from camlt.config import load_config
from camlt.data import build_datasets
from camlt.data.sources import (
    DataError,
    load_cifar,
    load_fmnist,
    read_cifar_pickle,
    read_idx,
    write_idx,
)


def test_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)


def test_fmnist_from_generated_idx_files(fmnist_root):
    splits = load_fmnist(str(fmnist_root))
    assert splits["train"].images.shape == (300, 1, 28, 28)
    assert np.bincount(splits["test"].labels).tolist() == [8] * 10


def test_fmnist_torchvision_layout(tmp_path):
    write_fmnist(tmp_path / "FashionMNIST" / "raw")
    assert len(load_fmnist(str(tmp_path))["train"].labels) == 300


def test_truncated_idx_names_the_file(tmp_path):
    root = write_fmnist(tmp_path / "f")
    path = root / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_fmnist(str(root))


def test_corrupt_gzip_names_the_file(tmp_path):
    root = write_fmnist(tmp_path / "f")
    path = root / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_fmnist(str(root))


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("camlt.data.sources.FMNIST_SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAMLT_DATA", raising=False)
    with pytest.raises(DataError) as err:
        load_fmnist(None)  # no data.root: every usual place is searched, and named
    text = str(err.value)
    assert (
        "nowhere" in text
        and "apt-get install dataset-fashion-mnist" in text
        and "data.download" in text
    )
    with pytest.raises(DataError, match=r"data.root=.*empty: Fashion-MNIST is not there"):
        load_fmnist(str(tmp_path / "empty"))  # a named root is used or refused


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_pickles_load(tmp_path, classes):
    write_cifar(tmp_path, classes)
    splits, names = load_cifar(classes, str(tmp_path))
    assert splits["train"].images.shape == (12 * classes, 3, 32, 32)
    assert np.bincount(splits["train"].labels).tolist() == [12] * classes
    assert len(names) == classes and names[1] in ("c1", "f1")


def test_cifar_pixels_are_in_channel_row_column_order(tmp_path):
    folder = write_cifar(tmp_path, 10)
    batch = read_cifar_pickle(folder / "data_batch_1")
    splits, _ = load_cifar(10, str(tmp_path))
    first = splits["train"].images[0]
    assert (
        first[1, 0, 0] == batch[b"data"][0, 1024]
        and first[0, 2, 5] == batch[b"data"][0, 2 * 32 + 5]
    )


def test_cifar_pickle_with_code_is_refused(tmp_path):
    folder = write_cifar(tmp_path, 10)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": Evil()}, fh)
    with pytest.raises(DataError, match="data_batch_2.*refusing"):
        load_cifar(10, str(tmp_path))


def test_cifar_lt_split_from_config(tmp_path):
    write_cifar(tmp_path, 10)
    cfg = load_config(
        ROOT / "configs" / "cifar10_lt.yaml",
        [f"data.root={tmp_path}", "data.n_max=12", "data.imbalance=10"],
    )
    train, test = build_datasets(cfg)
    assert train.class_counts() == [int(12 * 10 ** (-i / 9)) for i in range(10)]
    assert len(test) == 30 and train.images.dtype == torch.uint8


def test_fmnist_hard_order_and_ceiling(fmnist_root):
    base = ["data.n_max=30", "data.imbalance=10", f"data.root={fmnist_root}"]
    hard, _ = build_datasets(load_config(ROOT / "configs" / "fmnist_lt.yaml", base))
    counts = hard.class_counts()
    assert counts[1] == 30 and counts[6] == 3 and hard.images.shape[-1] == 32
    full, _ = build_datasets(
        load_config(ROOT / "configs" / "fmnist_lt.yaml", [*base, "data.balanced=true"])
    )
    assert full.class_counts() == [30] * 10


def test_more_images_than_the_data_has_is_refused(fmnist_root):
    cfg = load_config(
        ROOT / "configs" / "fmnist_lt.yaml", [f"data.root={fmnist_root}", "data.n_max=31"]
    )
    with pytest.raises(DataError, match="has 30 training images"):
        build_datasets(cfg)


def test_profile_that_empties_a_class_is_refused(fmnist_root):
    cfg = load_config(
        ROOT / "configs" / "fmnist_lt.yaml",
        [f"data.root={fmnist_root}", "data.n_max=30", "data.imbalance=100"],
    )
    with pytest.raises(DataError, match="would keep no image"):
        build_datasets(cfg)


def test_fashion_mnist_written_as_cifar_reads_back_image_for_image(tmp_path):
    """benchmarks/fmnist_as_cifar.py: the files a reference CIFAR-LT code reads (str keys under
    latin1, as torchvision indexes them), holding each garment padded and relabelled."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fmnist_as_cifar import convert

    fmnist = write_fmnist(tmp_path / "fm", per_class_train=7, per_class_test=2)
    order = [1, 5, 7, 8, 9, 3, 0, 2, 4, 6]
    folder = convert(str(fmnist), tmp_path / "out", order)
    with open(folder / "data_batch_1", "rb") as fh:
        entry = pickle.load(fh, encoding="latin1")
    assert {"data", "labels"} <= set(entry)
    splits, names = load_cifar(10, str(tmp_path / "out"))
    original = load_fmnist(str(fmnist))
    assert names[0] == "trouser" and len(splits["train"].labels) == 70
    test = splits["test"]
    assert test.images.shape == (20, 3, 32, 32)
    assert np.array_equal(test.images[:, 0, 2:30, 2:30], original["test"].images[:, 0])
    assert np.array_equal(np.asarray(order)[test.labels], original["test"].labels)
