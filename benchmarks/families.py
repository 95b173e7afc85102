"""The families that hold the state of the art (issue 34), on the table's terms: Fashion-MNIST-LT
IF100, hard class order, ResNet-32, the 30-epoch recipe of configs/fmnist_lt.yaml.

Contrastive learning: ProCo (model.head=proco: a linear classifier and the closed-form vMF
contrastive branch, both under balanced softmax; configs/fmnist_lt_proco.yaml).

Multi-expert models (model.experts=3: the stem and two stages shared, the last stage and a head
per expert): BalPoE's logit-adjusted experts, SADE's forward / uniform / backward experts (their
test-time aggregation is a second step, ``camlt adapt``, measured in the shifted-prior table),
RIDE's LDAM-DRW experts with its diversity term, and BalPoE with CAMC heads (the seed's method in
the family most like its claim).

    python benchmarks/families.py --jobs 2 --seeds 0
    python benchmarks/families.py --render-only
"""

from __future__ import annotations

from runner import main
from table import RAREST_COLUMNS, Row

EXPERTS = "configs/fmnist_lt_experts.yaml"  # BalPoE, normalized s=16 heads
PROCO = "configs/fmnist_lt_proco.yaml"
BALPOE = "experts: BalPoE x3 (taus 0, 1, 2), normalized s=16"
ROWS = [
    Row(BALPOE, EXPERTS, [], seeds=(0, 1, 2)),
    Row("experts: SADE x3 (equal weights), normalized s=16", EXPERTS, ["loss.name=sade"]),
    Row(
        "experts: RIDE-style LDAM-DRW x3, diversity 0.2, normalized s=30",
        EXPERTS,
        ["loss.name=ldam", "loss.drw_epoch=24", "model.scale=30", "loss.diversity=0.2"],
    ),
    Row("experts: BalPoE x3 (taus 0, 1, 2), CAMC heads", EXPERTS, ["model.head=camc"]),
    Row("contrastive: ProCo + balanced softmax, linear classifier", PROCO, []),
]
TITLE = (
    "The state-of-the-art families: multi-expert and contrastive (Fashion-MNIST-LT IF100, hard "
    "order, ResNet-32, experts: 3 on a shared trunk, 30 epochs)"
)

if __name__ == "__main__":
    main("families", ROWS, TITLE, default_seeds=(0,), extra_columns=RAREST_COLUMNS)
