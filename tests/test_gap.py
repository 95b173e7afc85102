"""The share of the CE-to-ceiling gap a row closes, with the tail found by class name."""

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gap  # noqa: E402

CLASSES = ["bag", "coat", "shirt"]


def _entry(row: str, seed: int, per_class: list[float], classes=CLASSES, counts=(100, 10, 5)):
    metrics = {"overall": sum(per_class) / 3, "per_class": per_class}
    return {
        "row": row,
        "seed": seed,
        "metrics": metrics,
        "classes": classes,
        "train_counts": counts,
    }


def test_shares_are_of_the_gap_on_seed_means_and_the_ceiling_is_read_by_class_name():
    row = "balanced softmax = logit adjustment loss (tau 1)"
    results = {
        "ce0": _entry(gap.CE, 0, [0.9, 0.5, 0.1]),
        "ce1": _entry(gap.CE, 1, [0.9, 0.5, 0.3]),  # CE's shirt: 0.2 on average
        # the ceiling lists its classes in another order and has no rarest class of its own
        "top": _entry(gap.CEILING, 0, [0.6, 0.8, 0.9], ["shirt", "coat", "bag"], (6, 6, 6)),
        "bs0": _entry(row, 0, [0.9, 0.6, 0.4]),
    }
    out = gap.compute(results)
    assert out["groups"] == {"tail": ["shirt"], "rarest": ["shirt"]}  # round(3 / 3) = 1 class
    assert out["ceiling"]["rarest"] == pytest.approx(0.6)
    assert out["rows"][row]["closed"]["rarest"] == pytest.approx((0.4 - 0.2) / (0.6 - 0.2))
    ce_overall, top_overall = (0.9 + 0.5 + 0.2) / 3, (0.6 + 0.8 + 0.9) / 3
    expected = ((0.9 + 0.6 + 0.4) / 3 - ce_overall) / (top_overall - ce_overall)
    assert out["rows"][row]["closed"]["overall"] == pytest.approx(expected)
    assert "| balanced softmax = logit adjustment loss (tau 1) | 0 | " in gap.render(out)


def test_without_the_ceiling_nothing_is_claimed():
    out = gap.compute({"ce0": _entry(gap.CE, 0, [0.9, 0.5, 0.1])})
    assert out["rows"] == {} and gap.render(out).startswith("Not run yet")


def test_the_headline_keeps_the_best_rows_that_have_every_seed_and_another_study_its_own_rows():
    rows = ["hard: CAMC full", "focal (gamma 1)", "recipe: CE + linear, wd 5e-4"]
    results = {
        "ce": _entry(gap.CE, 0, [0.9, 0.5, 0.1]),
        "top": _entry(gap.CEILING, 0, [0.9, 0.9, 0.9]),
        **{f"{n}{s}": _entry(n, s, [0.9, 0.6, 0.2]) for n in rows[:2] for s in (0, 1, 2)},
        "lever": _entry(rows[2], 0, [0.9, 0.9, 0.9]),  # the best, but one seed: not a headline
    }
    out = gap.compute(results)
    assert set(out["rows"]) == set(rows)
    assert set(gap.headline(out)["rows"]) == set(rows[:2])
    renamed = {k: {**e, "row": "clutter: " + e["row"]} for k, e in results.items()}
    other = gap.compute(
        renamed, "clutter: " + gap.CE, "clutter: " + gap.CEILING, ["clutter: " + rows[0]]
    )
    assert list(other["rows"]) == ["clutter: " + rows[0]]
    assert "| clutter: hard: CE + linear (0%) |" in gap.render(other, "cluttered")


def test_a_rows_gain_is_split_into_its_heads_gain_on_the_balanced_set_and_the_tails_part():
    row = "hard: normalized s=16 + balanced softmax"
    own = gap.HEAD_CEILINGS[row]
    results = {
        "ce": _entry(gap.CE, 0, [0.9, 0.5, 0.1]),
        "top": _entry(gap.CEILING, 0, [0.9, 0.9, 0.8], ["bag", "coat", "shirt"], (6, 6, 6)),
        "own": _entry(own, 0, [0.9, 0.9, 0.9], ["shirt", "coat", "bag"], (6, 6, 6)),
        "bs": _entry(row, 0, [0.9, 0.6, 0.5]),
    }
    out = gap.compute(results)
    assert own not in out["rows"]  # a ceiling is no row of the gap table
    split = gap.head_split(results, out)[row]
    # shirt: +0.4 over CE on the long-tailed set, +0.1 of it the head's on the balanced set
    assert split["gain"]["rarest"] == pytest.approx(0.4)
    assert split["balanced_gain"]["rarest"] == pytest.approx(0.9 - 0.8)
    assert split["tail_part"]["rarest"] == pytest.approx(0.3)
    assert f"| {row} | 0 | +16.7 / +40.0 / +40.0 | +3.3 / +10.0 / +10.0 |" in gap.render_split(
        {row: split}
    )
    del results["own"]
    assert gap.head_split(results, gap.compute(results)) == {}
