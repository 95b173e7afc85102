"""The subset's share of the spread (issue 33): the rows that decide the README's advice, trained
again on other long-tailed subsets of Fashion-MNIST-LT (``data.split_seed`` 1 and 2, with the
training seed equal to the split seed). The 30-epoch tables vary only the training seed on subset
0; a row "beats" another only if it does so on every subset.

    python benchmarks/subsets.py --jobs 2                 # fill what is missing, then render
    python benchmarks/subsets.py --render-only
"""

from ablation import ROWS as ABLATION_ROWS
from runner import main
from table import RAREST_COLUMNS, Row

SPLITS = (1, 2)
# CE + linear, CE + normalized, the best recipe and CAMC on it; the ceiling trains on the whole
# balanced set, which no split seed changes.
NAMES = (
    "hard: CE + linear",
    "hard: normalized s=16 + balanced softmax",
    "hard: CE + normalized s=16",
    "hard: CAMC + balanced softmax",
)


def subset_row(name: str, split: int) -> str:
    return f"{name}, subset {split}"


ROWS = [
    Row(subset_row(row.name, k), row.config, [*row.overrides, f"data.split_seed={k}"], seeds=(k,))
    for k in SPLITS
    for name in NAMES
    for row in ABLATION_ROWS
    if row.name == name
]
TITLE = "Other subsets: Fashion-MNIST-LT IF100, hard order, ResNet-32, 30 epochs, seed = split seed"

if __name__ == "__main__":
    main("subsets", ROWS, TITLE, default_seeds=SPLITS, extra_columns=RAREST_COLUMNS)
