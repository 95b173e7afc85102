"""Fashion-MNIST written as a CIFAR-10 "python version" folder, so that any CIFAR-LT code (camlt's
or a reference implementation's) trains on the same real images offline (benchmarks/fidelity.py).

The conversion: each 28x28 image padded by 2 to 32x32 and repeated to 3 channels; of each
class's 6,000 training images the first 5,000 in file order are kept (CIFAR-10's count), then
the 50,000 are shuffled with ``numpy.random.default_rng(0).permutation`` and cut into five
batches of 10,000; the test file keeps its 10,000 in file order. ``--order`` gives label i to
original class ORDER[i], so a CIFAR-LT rule, which keeps most images of label 0, builds that
class order (hard: 1,5,7,8,9,3,0,2,4,6).

    python benchmarks/fmnist_as_cifar.py data/fmnist_as_cifar --order 1,5,7,8,9,3,0,2,4,6
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

from camlt.data.sources import FMNIST_CLASSES, load_fmnist

PER_CLASS = 5000  # CIFAR-10's training images a class
BATCHES = 5


def as_cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 1, 28, 28) uint8 -> (N, 3072): padded to 32x32, three equal channels, channel-major."""
    padded = np.pad(images[:, 0], ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[:, None], 3, axis=1).reshape(len(images), 3 * 32 * 32)


def write(path: Path, record: dict) -> None:
    """One pickle (protocol 2) whose keys read as ``str`` under Python 3's ``encoding="latin1"``,
    as the CIFAR download's do: torchvision and the reference codes index ``entry["data"]``."""
    with open(path, "wb") as fh:
        pickle.dump(record, fh, protocol=2)


def convert(fmnist_root: str | None, out: Path, order: list[int]) -> Path:
    splits = load_fmnist(fmnist_root)
    relabel = np.empty(10, dtype=np.int64)
    relabel[order] = np.arange(10)
    folder = out / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train = splits["train"]
    keep = np.sort(
        np.concatenate([np.flatnonzero(train.labels == c)[:PER_CLASS] for c in range(10)])
    )
    rows, labels = as_cifar_rows(train.images[keep]), relabel[train.labels[keep]]
    shuffle = np.random.default_rng(0).permutation(len(labels))
    rows, labels = rows[shuffle], labels[shuffle]
    size = len(labels) // BATCHES
    for i in range(BATCHES):
        part = slice(i * size, (i + 1) * size)
        write(
            folder / f"data_batch_{i + 1}",
            {
                "batch_label": f"training batch {i + 1} of {BATCHES}",
                "labels": labels[part].tolist(),
                "data": rows[part],
            },
        )
    test = splits["test"]
    write(
        folder / "test_batch",
        {"labels": relabel[test.labels].tolist(), "data": as_cifar_rows(test.images)},
    )
    names = [FMNIST_CLASSES[c] for c in order]
    write(folder / "batches.meta", {"label_names": names, "num_vis": 3072})
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write cifar-10-batches-py into")
    parser.add_argument("--fmnist", help="Fashion-MNIST IDX folder (default: camlt's search)")
    parser.add_argument("--order", default="0,1,2,3,4,5,6,7,8,9", help="label i <- class ORDER[i]")
    args = parser.parse_args()
    order = [int(c) for c in args.order.split(",")]
    if sorted(order) != list(range(10)):
        parser.error(f"--order {args.order}: a permutation of 0..9")
    print(convert(args.fmnist, args.out, order))


if __name__ == "__main__":
    main()
