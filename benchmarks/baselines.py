"""The long-tail baselines beside CAMC: Fashion-MNIST-LT IF100, hard class order, ResNet-32, the
30-epoch recipe (configs/fmnist_lt.yaml) for every stage-1 row, 3 seeds (the ceiling: 1 seed).

Stage-2 rows (post-hoc logit adjustment, cRT, tau-norm, LWS) start from the CE run ("hard: CE + linear") of the same
seed (run first when missing): 30 epochs + 10 classifier epochs for cRT and LWS, + 0 for the
post-hoc corrections. tau-norm uses a fixed tau=1 (there is no validation split); the extra
"chosen on test" row sweeps tau on the test split, is optimistic by construction, and has one seed.

    python benchmarks/baselines.py                     # fill what is missing, then render
    python benchmarks/baselines.py --rows CE cRT       # only these rows (and their stage 1)
    python benchmarks/baselines.py --render-only       # rebuild the markdown and README block

CIFAR-10-LT / CIFAR-100-LT: one command per row with configs/baselines/*.yaml (docs/baselines.md).
"""

from runner import main
from table import RAREST_COLUMNS, Row

RECIPE = "configs/fmnist_lt.yaml"
LINEAR = "model.head=linear"
TAUS = "stage2.taunorm.tau_sweep=[0,0.25,0.5,0.75,1,1.25,1.5]"

CE = "hard: CE + linear"  # the same name as in the other tables, so the run is shared
BALANCED_SOFTMAX = "balanced softmax = logit adjustment loss (tau 1)"
ROWS = [
    Row("ceiling: balanced, CE + linear", RECIPE, ["data.balanced=true", LINEAR], seeds=(0,)),
    Row(CE, RECIPE, [LINEAR]),
    Row("focal (gamma 1)", RECIPE, [LINEAR, "loss.name=focal", "loss.focal.gamma=1"]),
    Row(
        "class-balanced focal (beta 0.9999, gamma 1)",
        RECIPE,
        [LINEAR, "loss.name=cb", "loss.cb.base=focal", "loss.cb.beta=0.9999", "loss.cb.gamma=1"],
    ),
    Row(
        "LDAM-DRW (normalized s=30, DRW from epoch 24)",
        RECIPE,
        ["model.head=normalized", "model.scale=30", "loss.name=ldam", "loss.drw_epoch=24"],
    ),
    # one row: CE on z + log(prior) is both losses (Ren et al.; Menon et al. at tau 1)
    Row(BALANCED_SOFTMAX, RECIPE, [LINEAR, "loss.name=balanced_softmax"]),
    Row(
        "logit adjustment, post-hoc (tau 1)",
        "configs/stage2_posthoc.yaml",
        ["loss.posthoc_tau=1"],
        depends=CE,
    ),
    Row("cRT (+10 epochs)", "configs/stage2_crt.yaml", depends=CE),
    Row(
        "tau-norm (tau 1, fixed)",
        "configs/stage2_taunorm.yaml",
        ["stage2.taunorm.tau=1"],
        depends=CE,
    ),
    # tau fitted on the test split: an optimistic bound on the row above, not a baseline
    Row(
        "tau-norm (tau chosen on TEST)",
        "configs/stage2_taunorm.yaml",
        [TAUS],
        depends=CE,
        seeds=(0,),
    ),
    Row("LWS (+10 epochs)", "configs/stage2_lws.yaml", depends=CE),
    # the method, named and configured as in the other tables so each run is trained once
    Row("hard: CE + normalized s=16", RECIPE, ["model.head=normalized", "model.scale=16"]),
    Row("hard: CAMC full", "configs/fmnist_lt_camc.yaml", ["model.scale=16"]),
    Row(
        "hard: CAMC + balanced softmax",
        "configs/fmnist_lt_camc.yaml",
        ["model.scale=16", "loss.name=balanced_softmax"],
    ),
]

TITLE = (
    "Baselines: Fashion-MNIST-LT IF100 (hard order), ResNet-32, 30 epochs, pad-4 crop + flip; "
    "stage-2 rows start from the CE run of the same seed"
)

if __name__ == "__main__":
    main("baselines", ROWS, TITLE, extra_columns=RAREST_COLUMNS)
