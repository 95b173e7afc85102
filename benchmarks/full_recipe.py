"""The full 200-epoch recipe (the CIFAR-LT papers' schedule, unchanged) on Fashion-MNIST-LT
IF100, hard order, ResNet-32, for the rows the 30-epoch tables single out; one seed. Hours on a
CPU, minutes on a GPU (benchmarks/gpu.sh runs it).

    python benchmarks/full_recipe.py                 # fill what is missing, then render
    python benchmarks/full_recipe.py --render-only
"""

from ablation import ROWS as ABLATION_ROWS
from runner import main
from table import RAREST_COLUMNS, Row

SCHEDULE = ["train.epochs=200", "train.warmup_epochs=5", "train.milestones=[160,180]"]
PREFIX = "200 epochs, "
# the recipe's default (issue 2), then CAMC's best row and its twin without CAMC (issue 3)
NAMES = (
    "hard: CE + normalized s=16",
    "hard: CAMC + balanced softmax",
    "hard: normalized s=16 + balanced softmax",
    "hard: CE + linear",
    "hard: CAMC full",
)
ROWS = [
    Row(f"{PREFIX}{row.name}", row.config, [*row.overrides, *SCHEDULE], seeds=(0,))
    for name in NAMES
    for row in ABLATION_ROWS
    if row.name == name
]
TITLE = "The full recipe: Fashion-MNIST-LT IF100, ResNet-32, 200 epochs (lr x0.1 at 160 and 180)"

if __name__ == "__main__":
    main("full_recipe", ROWS, TITLE, default_seeds=(0,), extra_columns=RAREST_COLUMNS)
