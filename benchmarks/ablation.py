"""The CAMC ablation of issue 3 (the equal-budget ablation of docs/camc.md): Fashion-MNIST-LT IF100, hard class order,
ResNet-32, the 30-epoch recipe of configs/fmnist_lt.yaml for every row, 3 seeds (one for the s
sweep and the ceiling), with the accuracy of the three rarest classes and of the rarest one.

    python benchmarks/ablation.py                          # fill what is missing, then render
    python benchmarks/ablation.py --rows "hard: CE + linear" --seeds 0
    python benchmarks/ablation.py --render-only            # rebuild the markdown and README block
    python benchmarks/ablation.py train.epochs=200 train.warmup_epochs=5 \
        train.milestones=[160,180]                         # the full recipe (a separate table)

Hours of CPU: run the s sweep first (``--rows`` with the "CE + normalized" rows), set BEST_S
from it, then the CAMC rows; set BEST_CAMC to the two best CAMC rows for the standard order.
"""

from __future__ import annotations

from runner import main
from table import RAREST_COLUMNS, Row

BASE = "configs/fmnist_lt.yaml"  # hard order, ResNet-32, 30 epochs
CAMC = "configs/fmnist_lt_camc.yaml"  # the same recipe with model.head=camc
SCALES = (4, 8, 16, 32, 64)
BEST_S = 16  # the best s of the "CE + normalized" sweep; every CAMC row uses it
# The CAMC rows repeated on the standard class order: the best two on the hard order over 3 seeds
# (variant=class beat "CAMC full" on overall, tail and shirt on every seed).
BEST_CAMC = ("CAMC + balanced softmax", "CAMC variant=class")

CAMC_ROWS = {
    "CAMC full": [],  # guide=predicted, calibrated, CAM + correlation
    "CAMC without correlation": ["model.camc.use_corr=false"],
    "CAMC without CAM": ["model.camc.use_cam=false"],
    "CAMC uncalibrated": ["model.camc.calibrate=false"],
    "CAMC guide=target": ["model.camc.guide=target"],
    "CAMC guide=balanced": ["model.camc.guide=balanced"],
    "CAMC variant=class": ["model.camc.variant=class"],
    # our own variant: step 8's "any re-weighting loss" with the strongest loss of the probe
    "CAMC + balanced softmax": ["loss.name=balanced_softmax"],
    # the best CE-trained design (it beat section 2 on every seed) with the best loss
    "CAMC variant=class + balanced softmax": [
        "model.camc.variant=class",
        "loss.name=balanced_softmax",
    ],
}


def camc_row(name: str, order: str) -> Row:
    """A CAMC row at BEST_S on the given class order."""
    extra = ["data.order=standard"] if order == "standard" else []
    return Row(f"{order}: {name}", CAMC, [*extra, f"model.scale={BEST_S}", *CAMC_ROWS[name]])


ROWS = [
    Row("ceiling: balanced, CE + linear", BASE, ["data.balanced=true", "model.head=linear"], (0,)),
    Row("hard: CE + linear", BASE, ["model.head=linear"]),
    *(  # the sweep: one seed each, the table's seeds at BEST_S (the baseline of the CAMC rows)
        Row(
            f"hard: CE + normalized s={s}",
            BASE,
            ["model.head=normalized", f"model.scale={s}"],
            None if s == BEST_S else (0,),
        )
        for s in SCALES
    ),
    # CAMC + balanced softmax with CAMC taken out: the row that credits (or not) CAMC there
    Row(
        f"hard: normalized s={BEST_S} + balanced softmax",
        BASE,
        ["model.head=normalized", f"model.scale={BEST_S}", "loss.name=balanced_softmax"],
    ),
    *(camc_row(name, "hard") for name in CAMC_ROWS),
    Row("standard: CE + linear", BASE, ["data.order=standard", "model.head=linear"]),
    Row(
        f"standard: CE + normalized s={BEST_S}",
        BASE,
        ["data.order=standard", "model.head=normalized", f"model.scale={BEST_S}"],
    ),
    *(camc_row(name, "standard") for name in BEST_CAMC),
]


if __name__ == "__main__":
    main(
        "ablation",
        ROWS,
        "CAMC ablation: Fashion-MNIST-LT IF100, ResNet-32, 30 epochs",
        default_seeds=(0, 1, 2),
        extra_columns=RAREST_COLUMNS,
    )
