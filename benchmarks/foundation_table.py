"""Fashion-MNIST-LT IF100, ResNet-32, 30 epochs: CE + linear vs CE + normalized (s=16), both class
orders, with the ceiling (CE + linear on the full balanced set, one seed).

    python benchmarks/foundation_table.py                 # fill what is missing, then render
    python benchmarks/foundation_table.py --render-only   # rebuild the markdown and README block
"""

from runner import main
from table import Row

RECIPE = "configs/fmnist_lt.yaml"
ROWS = [
    Row(
        "ceiling: balanced, CE + linear",
        RECIPE,
        ["data.balanced=true", "model.head=linear"],
        seeds=(0,),
    ),
    Row("hard: CE + linear", RECIPE, ["model.head=linear"]),
    Row("hard: CE + normalized s=16", RECIPE, ["model.head=normalized", "model.scale=16"]),
    Row("standard: CE + linear", RECIPE, ["data.order=standard", "model.head=linear"]),
    Row(
        "standard: CE + normalized s=16",
        RECIPE,
        ["data.order=standard", "model.head=normalized", "model.scale=16"],
    ),
]

if __name__ == "__main__":
    main("foundation", ROWS, "Fashion-MNIST-LT IF100, ResNet-32, CE + linear vs CE + normalized")
