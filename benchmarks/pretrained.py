"""The pretrained study (issue 35): ImageNet EfficientNet-Lite0 on Fashion-MNIST-LT (IF100, hard
order, the 30-epoch schedule of configs/fmnist_lt.yaml) with each fine-tuning strategy x {CE,
balanced softmax} x {linear, normalized, CAMC}, against the same network from scratch, against
our ResNet-32 recipe (the row of the recipes table, trained once), and against its own ceiling
(fine-tuned in full on the balanced set with the same budget).

Every input reaches the backbone at ``--size`` pixels (``model.input_size``; 224 is its
pretraining size). On a CPU a fine-tuning epoch at 224 takes hours (benchmarks/input_size_cost.py);
the probes are cheap there (cached features, benchmarks/probe_speed.py). Fine-tuning rows train at
lr 0.01 (a tenth of the from-scratch recipe's, as pretrained networks are usually tuned), the
probes at the recipe's 0.1.

    python benchmarks/pretrained.py --rows "pretrained: probe, balanced softmax, linear" --seeds 0
    python benchmarks/pretrained.py --jobs 4 --seeds 0          # a GPU: every row, one seed
    python benchmarks/pretrained.py model.input_size=64 ...     # a smaller stated size: a table
                                                                # of its own (pretrained-model...)
    python benchmarks/pretrained.py --render-only
"""

from __future__ import annotations

import sys

from ablation import ROWS as ABLATION_ROWS
from runner import main
from table import RAREST_COLUMNS, Row

BASE = "configs/fmnist_lt.yaml"
SIZE = 224
STRATEGIES = {"probe": "probe", "BN + head": "bn_head", "last stage": "last:1",
              "LP-FT (3 epochs)": "lp_ft:3", "full": "full"}  # fmt: skip
LOSSES = {"CE": "ce", "balanced softmax": "balanced_softmax"}
HEADS = ("linear", "normalized", "camc")
RECIPE = "hard: normalized s=16 + balanced softmax"  # ResNet-32 from scratch (ablation table)


def network(pretrained: bool) -> list[str]:
    common = ["model.backbone=timm/efficientnet_lite0", f"model.input_size={SIZE}"]
    return [*common, "model.pretrained=packaged"] if pretrained else common


def row_name(strategy: str, loss: str, head: str) -> str:
    return f"pretrained: {strategy}, {loss}, {head}"


def rows() -> list[Row]:
    found = []
    for strategy, setting in STRATEGIES.items():
        lr = "train.lr=0.1" if setting == "probe" else "train.lr=0.01"
        for loss, name in LOSSES.items():
            for head in HEADS:
                overrides = [*network(True), f"model.finetune={setting}", lr,
                             f"loss.name={name}", f"model.head={head}"]  # fmt: skip
                found.append(Row(row_name(strategy, loss, head), BASE, overrides))
    scratch = [*network(False), "loss.name=balanced_softmax", "model.head=normalized"]
    found.append(
        Row("EfficientNet-Lite0 from scratch, balanced softmax, normalized", BASE, scratch)
    )
    found += [row for row in ABLATION_ROWS if row.name == RECIPE]  # the same run as there
    ceiling = [*network(True), "model.finetune=full", "train.lr=0.01", "data.balanced=true",
               "model.head=linear"]  # fmt: skip
    found.append(Row("ceiling: pretrained EfficientNet-Lite0, balanced, full, CE, linear", BASE,
                     ceiling, seeds=(0,)))  # fmt: skip
    return found


def title(argv: list[str]) -> str:
    """The table's title, with the input size a ``model.input_size=N`` override gives."""
    sizes = [a.split("=", 1)[1] for a in argv if a.startswith("model.input_size=")]
    size = sizes[-1] if sizes else SIZE
    return (
        f"Pretrained EfficientNet-Lite0 (ImageNet) on Fashion-MNIST-LT IF100, hard order, inputs "
        f"at {size} px, 30 epochs"
    )


if __name__ == "__main__":
    main("pretrained", rows(), title(sys.argv[1:]), default_seeds=(0,),
         extra_columns=RAREST_COLUMNS)  # fmt: skip
