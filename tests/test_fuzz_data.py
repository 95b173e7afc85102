"""Property-based tests of the dataset file readers: IDX (Fashion-MNIST) and CIFAR pickles.

Arbitrary, truncated or bit-flipped bytes give a DataError that names the file, never another
exception; a file that is accepted gives exactly what it holds (no cast, no wrap-around).
"""

from __future__ import annotations

import gzip
import math
import pickle
import shutil
import struct

import numpy as np
import pytest
from conftest import write_cifar, write_fmnist
from fuzz_settings import examples
from hypothesis import example, given
from hypothesis import strategies as st

from camlt.data.sources import (
    FMNIST_FILES,
    DataError,
    load_cifar,
    load_fmnist,
    read_cifar_pickle,
    read_idx,
)

FAST = examples(200)
SLOW = examples(40)  # each example reads a whole (tiny) dataset
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def expect_data_error(call, path):
    """The call's result, or None after a DataError naming ``path``."""
    try:
        return call()
    except DataError as err:
        assert str(path.name) in str(err)
        return None


def mutate(data: bytes, draw) -> bytes:
    """Truncate, flip bytes of, or append to ``data``, as hypothesis chooses."""
    how = draw(st.sampled_from(["truncate", "flip", "append", "prefix"]))
    if how == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=50))
    if how == "prefix":
        return draw(st.binary(min_size=1, max_size=20)) + data
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    return bytes(out)


# ----------------------------------------------------------------------------- IDX
@FAST
@given(raw=st.binary(max_size=200), compress=st.booleans())
@example(raw=b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 30, compress=False)
@example(raw=bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**31, 4), compress=False)
@example(raw=bytes([0, 0, 8, 255]), compress=True)
@example(raw=b"", compress=False)
def test_arbitrary_idx_bytes_give_an_array_that_matches_its_header_or_data_error(
    raw, compress, tmp_path
):
    path = tmp_path / "file.idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    array = expect_data_error(lambda: read_idx(path), path)
    if array is None:
        return
    # accepted: the header's magic, shape and payload are exactly what came back
    assert raw[:2] == b"\x00\x00" and raw[2] in IDX_TYPES and raw[3] == array.ndim
    shape = struct.unpack(f">{raw[3]}I", raw[4 : 4 + 4 * raw[3]])
    assert array.shape == shape
    expected = np.frombuffer(raw[4 + 4 * raw[3] :], dtype=IDX_TYPES[raw[2]])
    assert math.prod(shape) == expected.size
    np.testing.assert_array_equal(array.reshape(-1), expected)


@FAST
@given(
    code=st.sampled_from(sorted(IDX_TYPES)),
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    extra=st.integers(-3, 3),
)
def test_idx_payload_of_the_wrong_length_is_refused(code, shape, extra, tmp_path):
    dtype = np.dtype(IDX_TYPES[code])
    payload = np.arange(math.prod(shape), dtype=np.uint8).astype(dtype).tobytes()
    payload = payload[: len(payload) + extra] if extra < 0 else payload + b"\x07" * extra
    path = tmp_path / "file.idx"
    path.write_bytes(
        bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload
    )
    array = expect_data_error(lambda: read_idx(path), path)
    assert (array is None) == (len(payload) != math.prod(shape) * dtype.itemsize)


@pytest.fixture(scope="module")
def fmnist_files(tmp_path_factory):
    root = write_fmnist(tmp_path_factory.mktemp("fm"), per_class_train=2, per_class_test=1)
    return {p.name: p.read_bytes() for p in root.iterdir()}


def copy_files(files: dict[str, bytes], root):
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (root / name).write_bytes(content)
    return root


@SLOW
@given(data=st.data())
def test_damaged_fashion_mnist_files_give_data_error_or_exact_arrays(fmnist_files, tmp_path, data):
    root = copy_files(fmnist_files, tmp_path / "fm")
    victim = data.draw(st.sampled_from(sorted(fmnist_files)))
    damaged = mutate(gzip.decompress(fmnist_files[victim]), data.draw)
    (root / victim).write_bytes(gzip.compress(damaged) if data.draw(st.booleans()) else damaged)
    splits = expect_data_error(lambda: load_fmnist(str(root)), root / victim)
    if splits is None:
        return
    for name, split in splits.items():  # accepted: consistent, uint8 images, integer labels
        assert split.images.dtype == np.uint8 and split.images.shape[1:2] == (1,)
        assert split.labels.dtype == np.int64 and len(split.labels) == len(split.images)
        images = read_idx(root / FMNIST_FILES[name][0])
        np.testing.assert_array_equal(split.images[:, 0], images)


@pytest.mark.parametrize("code, dtype", [(0x0E, ">f8"), (0x0B, ">i2")])
def test_fashion_mnist_labels_or_images_of_another_type_are_refused_not_cast(
    fmnist_files, tmp_path, code, dtype
):
    root = copy_files(fmnist_files, tmp_path / "fm")
    labels = np.full(20, 1.7 if dtype == ">f8" else 300).astype(dtype)
    name = "train-labels-idx1-ubyte.gz" if dtype == ">f8" else "train-images-idx3-ubyte.gz"
    shape = (20,) if dtype == ">f8" else (20, 1, 1)
    header = bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    (root / name).write_bytes(gzip.compress(header + labels.tobytes()))
    with pytest.raises(DataError, match="expected uint8 images and integer labels"):
        load_fmnist(str(root))


# ----------------------------------------------------------------------------- CIFAR
@FAST
@given(raw=st.binary(max_size=300))
@example(raw=pickle.dumps({b"data": 1}, protocol=0)[:-1])
@example(raw=b"\x80\x04\x95" + b"\xff" * 8)  # a frame claiming an absurd size
def test_arbitrary_cifar_bytes_give_a_dict_or_data_error(raw, tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw)
    batch = expect_data_error(lambda: read_cifar_pickle(path), path)
    assert batch is None or isinstance(batch, dict)


arrays = st.one_of(
    st.builds(
        lambda n, dt, v: np.full((n, 3072), v).astype(dt),
        st.integers(0, 3),
        st.sampled_from(["u1", "i8", "f4", "f8", "u2"]),
        st.sampled_from([0, 7, 255, 300, -1]),
    ),
    st.builds(lambda n: np.zeros((n, 3, 32, 32), np.uint8), st.integers(1, 2)),
    st.lists(st.integers(0, 255), max_size=4),
    st.none(),
    st.text(max_size=3),
)
labels = st.one_of(
    st.lists(st.integers(-(2**70), 2**70), max_size=4),
    st.lists(st.integers(0, 9), min_size=0, max_size=3),
    st.lists(st.floats(), max_size=3),
    st.lists(st.text(max_size=2), max_size=3),
    st.builds(lambda n: np.full(n, 1.5), st.integers(1, 3)),
    st.builds(lambda n: np.arange(n, dtype=np.uint64), st.integers(0, 3)),
    st.none(),
)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("cifar"), 10, per_class_train=1, per_class_test=1)


@SLOW
@given(batch=st.fixed_dictionaries({}, optional={b"data": arrays, b"labels": labels}))
@example(batch={b"data": np.full((2, 3072), 300.0), b"labels": [0, 1]})  # would wrap to 44
@example(batch={b"data": np.zeros((2, 3072), np.uint8), b"labels": np.array([0.9, 1.2])})
def test_cifar_batches_are_read_exactly_or_refused(batch, cifar_dir, tmp_path):
    folder = tmp_path / "root" / cifar_dir.name
    if not folder.exists():  # hypothesis reuses tmp_path across examples
        shutil.copytree(cifar_dir, folder)
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    loaded = expect_data_error(
        lambda: load_cifar(10, str(tmp_path / "root")), folder / "data_batch_3"
    )
    if loaded is None:
        return
    images = loaded[0]["train"].images
    mine = slice(4, 4 + len(batch[b"data"]))  # batches 1, 2 hold 2 images each in the fixture
    # accepted: the batch was genuine uint8 N x 3072 with N integer labels, and is kept exactly
    assert batch[b"data"].dtype == np.uint8
    np.testing.assert_array_equal(images[mine].reshape(-1, 3072), batch[b"data"])
    np.testing.assert_array_equal(
        loaded[0]["train"].labels[mine], np.asarray(batch[b"labels"], dtype=np.int64)
    )
