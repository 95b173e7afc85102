"""Shifted test priors for a multi-expert run (issue 34): the experts' joint prediction with equal
weights, with test-time aggregation (``camlt adapt``: weights learned on each shifted test set's
own images, no label read), and with the test set's prior known (post-hoc adjustment).

The test sets are those of ``benchmarks/shifted_priors.py`` (drawn from Fashion-MNIST-LT's balanced
test set with a forward or backward long-tailed profile, ``camlt.priors``). It reads finished runs
of the families table and trains nothing.

    python benchmarks/experts_priors.py [--runs-dir runs/benchmarks/recipe]

Writes benchmarks/results/experts_priors.json and .md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from families import ROWS
from runner import run_dir_of
from table import machine

from camlt import adapt
from camlt.checkpoint import atomic_write_json, atomic_write_text
from camlt.data.inputs import normalise
from camlt.data.loaders import build_sets
from camlt.priors import TEST_PRIORS, shifted_test_indices
from camlt.rundir import FINAL_FILE
from camlt.trained import evaluate, open_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BATCH = 500


def batches(images: torch.Tensor):
    for start in range(0, len(images), BATCH):
        yield images[start : start + BATCH]


@torch.no_grad()
def expert_log_probs(loaded, images: torch.Tensor) -> torch.Tensor:
    """Each expert's log-probabilities (experts, N, K) of uint8 images: one pass serves every
    weighting (the joint prediction is their weighted sum)."""
    experts = adapt.experts_of(loaded.model)
    loaded.model.eval()
    out = []
    for batch in batches(images):
        x = normalise(batch, loaded.spec).to(loaded.device)
        outputs = experts.expert_outputs(loaded.model.features(x))
        out.append(torch.stack([o.logits.float().log_softmax(1).cpu() for o in outputs]))
    return torch.cat(out, dim=1)


def rows_of(name: str, run_dir: Path) -> dict[str, dict[str, float]]:
    """Top-1 (%) on every shifted test set, and the weights test-time aggregation learned."""
    loaded = open_run(run_dir, device="cpu")
    loaded.calibration = None
    experts = adapt.experts_of(loaded.model)
    test = build_sets(loaded.cfg, verbose=False).test
    images, labels = test.images, test.labels
    equal = torch.full((len(experts),), 1.0 / len(experts))
    spec = loaded.spec
    every = expert_log_probs(loaded, images)  # the unaugmented test images, once
    rows: dict[str, dict] = {f"{name}, equal weights": {}, f"{name}, adapted": {}}
    rows[f"{name}, equal weights + known test prior"] = {}
    weights: dict[str, list[float]] = {}
    for prior in TEST_PRIORS:
        keep = torch.from_numpy(shifted_test_indices(prior, labels, loaded.train_counts))
        truth, own = labels[keep], every[:, keep]
        plain = torch.einsum("e,enk->nk", equal, own)
        counts = torch.bincount(truth, minlength=len(loaded.classes)).double()
        known = loaded.adjust(plain, counts / counts.sum())
        log_probs = adapt.view_log_probs(
            loaded.model, batches(images[keep]), lambda b: normalise(b, spec), loaded.device
        )
        learned, _, _ = adapt.fit_weights(log_probs)
        adapted = torch.einsum("e,enk->nk", learned, own)
        rows[f"{name}, equal weights"][prior] = 100 * evaluate(loaded, plain, truth)["overall"]
        rows[f"{name}, adapted"][prior] = 100 * evaluate(loaded, adapted, truth)["overall"]
        top1 = (known.argmax(1) == truth).double().mean().item()
        rows[f"{name}, equal weights + known test prior"][prior] = 100 * top1
        weights[prior] = [round(w, 3) for w in learned.tolist()]
    return {"rows": rows, "weights": weights}


def render(result: dict) -> str:
    head = " | ".join(TEST_PRIORS)
    lines = [
        "**Shifted test priors, multi-expert runs** (Fashion-MNIST-LT IF100, hard order, "
        "ResNet-32 trunk, 3 experts, 30 epochs; top-1 % on the test sets of "
        "`benchmarks/shifted_priors.py`; `benchmarks/experts_priors.py`)",
        "",
        f"| model | {head} |",
        "|---|" + "---|" * len(TEST_PRIORS),
    ]
    for run in result["runs"].values():
        for row, cells in run["rows"].items():
            lines.append(f"| {row} | " + " | ".join(f"{cells[p]:.1f}" for p in TEST_PRIORS) + " |")
    lines += [
        "",
        "Weights learned by test-time aggregation (experts in the order of their loss):",
        "",
    ]
    lines += [f"| run | {head} |", "|---|" + "---|" * len(TEST_PRIORS)]
    for name, run in result["runs"].items():
        cells = [" / ".join(f"{w:.2f}" for w in run["weights"][p]) for p in TEST_PRIORS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Seed {result['seed']}, subset 0 (split seed 0). Runs trained on {result['trained_on']}; "
        f"evaluated in fp32 on {result['machine']}. Adapted: the experts' weights learned on the "
        "shifted test set's images alone (two augmented views each, their agreement maximised; "
        "no label read). Known test prior: the equal-weight scores plus the log of the test "
        "set's class frequencies, which a deployment may not know.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "benchmarks" / "recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trained-on", default="AMD EPYC, fp32, 1 thread, torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = {}
    for row in ROWS:
        run_dir = run_dir_of(row.name, args.seed, args.runs_dir)
        if (run_dir / FINAL_FILE).is_file():
            print(f"measuring {row.name} ...", flush=True)
            name = row.name.removeprefix("experts: ")
            runs[name] = rows_of(name, run_dir)
    if not runs:
        raise SystemExit(f"no finished run of benchmarks/families.py under {args.runs_dir}")
    result = {
        "runs": runs,
        "seed": args.seed,
        "machine": machine("cpu", 1),
        "trained_on": args.trained_on,
    }
    atomic_write_json(RESULTS / "experts_priors.json", result)
    text = render(result)
    atomic_write_text(RESULTS / "experts_priors.md", text)
    print(text)


if __name__ == "__main__":
    main()
