"""Readers for the real on-disk formats: CIFAR "python version" pickles and IDX (.gz) files.

Every reader names the file it was reading when the bytes are not what the format promises.
CIFAR pickles are read with an unpickler that can only build arrays, so a file from elsewhere
cannot run code.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camlt.errors import UserError


class DataError(UserError, RuntimeError):
    """A dataset that is missing, truncated or not in the expected format."""


@dataclass
class ArraySplit:
    """One split of an in-memory image dataset: uint8 images (N, C, H, W) and int64 labels."""

    images: np.ndarray
    labels: np.ndarray


FMNIST_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------- IDX
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (gzip-compressed or plain), checked against its own header."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataError(f"{path}: not a readable gzip IDX file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: bad IDX magic number {raw[:4].hex() or 'empty file'}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a forged header cannot overflow
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header says {shape} ({expected} bytes) but {len(raw) - header} follow"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX .gz file (used by tests and by users converting their own data)."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


def fmnist_search_dirs(root: str | None) -> list[Path]:
    """Where Fashion-MNIST may lie: data.root (flat or torchvision layout) alone when it is given
    (a root the user names is used or refused, never passed over for another copy); else
    $CAMLT_DATA, the Debian package and ./data."""
    if root:
        base = Path(root).expanduser()
        return [base, base / "FashionMNIST" / "raw", base / "fashion-mnist"]
    dirs = []
    env = os.environ.get("CAMLT_DATA")
    if env:
        dirs += [Path(env), Path(env) / "FashionMNIST" / "raw"]
    dirs += [FMNIST_SYSTEM_DIR, Path("data") / "FashionMNIST" / "raw"]
    return dirs


def _find_idx(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def load_fmnist(root: str | None, download: bool = False) -> dict[str, ArraySplit]:
    """Fashion-MNIST train and test splits as (N, 1, 28, 28) uint8 arrays."""
    for directory in fmnist_search_dirs(root):
        paths = {s: [_find_idx(directory, f) for f in files] for s, files in FMNIST_FILES.items()}
        if all(p is not None for pair in paths.values() for p in pair):
            return {split: _idx_split(*pair) for split, pair in paths.items()}
    if download:
        return _download_fmnist(root or "data")
    if root:
        raise DataError(_missing_under_root(root, fmnist_search_dirs(root)))
    looked = "\n  ".join(str(d) for d in fmnist_search_dirs(root))
    raise DataError(
        "Fashion-MNIST not found. Looked for the four IDX files in:\n  " + looked + "\n"
        "Get it in one of these ways:\n"
        "  - Debian/Ubuntu: apt-get install dataset-fashion-mnist (puts them in "
        f"{FMNIST_SYSTEM_DIR})\n"
        "  - torchvision download (needs internet): add data.download=true\n"
        "  - copy the four .gz files into a folder and pass data.root=FOLDER"
    )


def _missing_under_root(root: str, layouts: list[Path]) -> str:
    """What data.root lacks: the Fashion-MNIST files missing in the layout closest to complete."""
    names = [f for files in FMNIST_FILES.values() for f in files]

    def missing(directory: Path) -> list[str]:
        return [n for n in names if _find_idx(directory, n) is None]

    best = min(layouts, key=lambda d: len(missing(d)))
    return (
        f"data.root={root}: Fashion-MNIST is not there: {best} lacks "
        f"{', '.join(missing(best))} (of the four IDX files {', '.join(names)}; also looked in "
        f"{', '.join(str(d) for d in layouts if d != best)}). Fix data.root, or leave it unset "
        "to use the system's copy"
    )


def _idx_split(images_path: Path, labels_path: Path) -> ArraySplit:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{images_path} / {labels_path}: expected N images of HxW and N labels, "
            f"got {images.shape} and {labels.shape}"
        )
    if images.dtype != np.uint8 or labels.dtype.kind not in "iu":
        raise DataError(  # a cast would silently change pixel values or labels
            f"{images_path} / {labels_path}: expected uint8 images and integer labels, "
            f"got {images.dtype} and {labels.dtype}"
        )
    return ArraySplit(images[:, None].copy(), labels.astype(np.int64))


def _download_fmnist(root: str) -> dict[str, ArraySplit]:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(root, train=True, download=True)
    FashionMNIST(root, train=False, download=True)
    return load_fmnist(root, download=False)


# ----------------------------------------------------------------------------- CIFAR
_CIFAR_LAYOUT = {
    10: (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        b"labels",
        b"label_names",
    ),
    100: ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names"),
}
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; anything else is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def read_cifar_pickle(path: Path) -> dict:
    """One CIFAR batch or meta file as a dict with bytes keys."""
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: missing CIFAR file") from None
    except Exception as err:  # any unpickling failure is a corrupt file
        raise DataError(f"{path}: not a readable CIFAR python-version file ({err})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _cifar_labels(value: object) -> np.ndarray | None:
    """A 1-D integer label array, or None where the value is anything else (never a cast)."""
    try:
        labels = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        return None
    if labels.ndim != 1 or (labels.dtype.kind not in "iu" and labels.size):
        return None
    return labels


def _cifar_batches(directory: Path, names: list[str], label_key: bytes) -> ArraySplit:
    images, labels = [], []
    for name in names:
        path = directory / name
        batch = read_cifar_pickle(path)
        if b"data" not in batch or label_key not in batch:
            raise DataError(f"{path}: missing key 'data' or '{label_key.decode()}'")
        data, batch_labels = batch[b"data"], _cifar_labels(batch[label_key])
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            got = f"{data.dtype} array" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{path}: 'data' must be an N x 3072 uint8 array, found {got}")
        if data.shape[1] != 3072 or batch_labels is None or len(data) != len(batch_labels):
            raise DataError(
                f"{path}: expected N x 3072 uint8 images and N integer labels, got images "
                f"{data.shape} and labels {getattr(batch_labels, 'shape', 'not integers')}"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels.astype(np.int64))
    return ArraySplit(np.concatenate(images), np.concatenate(labels))


def _class_names(names: object, num_classes: int, path: Path) -> list[str]:
    """The meta file's class names: exactly one per class, or none (then numbers are used)."""
    if not isinstance(names, list | tuple) or len(names) not in (0, num_classes):
        count = len(names) if isinstance(names, list | tuple) else type(names).__name__
        raise DataError(f"{path}: expected {num_classes} class names, found {count}")
    try:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: class names are not text ({err})") from None


def load_cifar(
    num_classes: int, root: str | None, download: bool = False
) -> tuple[dict[str, ArraySplit], list[str]]:
    """CIFAR-10 or CIFAR-100 train and test splits and class names."""
    folder, train_names, test_names, meta_name, label_key, names_key = _CIFAR_LAYOUT[num_classes]
    bases = [Path(root).expanduser()] if root else []  # a named root alone: used or refused
    if not root and os.environ.get("CAMLT_DATA"):
        bases.append(Path(os.environ["CAMLT_DATA"]))
    if not root:
        bases.append(Path("data"))
    for base in bases:
        directory = base / folder if (base / folder).is_dir() else base
        if (directory / meta_name).is_file() and (directory / train_names[0]).is_file():
            meta = read_cifar_pickle(directory / meta_name)
            classes = _class_names(meta.get(names_key, []), num_classes, directory / meta_name)
            splits = {
                "train": _cifar_batches(directory, train_names, label_key),
                "test": _cifar_batches(directory, test_names, label_key),
            }
            return splits, classes or [str(i) for i in range(num_classes)]
    if download:
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if num_classes == 10 else CIFAR100
        cls(root or "data", train=True, download=True)
        cls(root or "data", train=False, download=True)
        return load_cifar(num_classes, root or "data", download=False)
    looked = ", ".join(str(b / folder) for b in bases)
    if root:
        raise DataError(
            f"data.root={root}: CIFAR-{num_classes} is not there (expected {meta_name} and "
            f"{', '.join(train_names)} in {Path(root).expanduser() / folder} or {root}). Fix "
            "data.root, or pass data.download=true where the machine is online"
        )
    raise DataError(
        f"CIFAR-{num_classes} not found (looked in {looked}). Get it by passing data.root=DIR "
        f"holding '{folder}/' (torchvision's python-version download), or data.download=true "
        "where the machine is online."
    )
