"""Paired differences: per seed, only on the seeds both rows have."""

import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import paired  # noqa: E402


def _entry(row: str, seed: int, overall: float, shirt: float) -> dict:
    metrics = {"overall": overall, "tail": 0.5, "head": 0.9, "ece": 0.05, "per_class": [0.9, shirt]}
    return {"row": row, "seed": seed, "metrics": metrics, "train_counts": [100, 10]}


def test_differences_are_per_seed_on_the_common_seeds(tmp_path, monkeypatch):
    results = {
        "A/seed0": _entry("A", 0, 0.80, 0.30),
        "A/seed1": _entry("A", 1, 0.85, 0.20),
        "A/seed2": _entry("A", 2, 0.90, 0.10),
        "B/seed0": _entry("B", 0, 0.79, 0.10),
        "B/seed1": _entry("B", 1, 0.86, 0.25),
    }
    (tmp_path / "t.json").write_text(json.dumps(results))
    monkeypatch.setattr(paired, "RESULTS", tmp_path)
    pair = paired.compare("t", "A", "B")
    assert pair["seeds"] == [0, 1]
    assert pair["diffs"]["overall"] == [1.0, -1.0]
    assert pair["diffs"]["rarest"] == [20.0, -5.0]  # class 1 has the fewest training images
    assert "+0.0 (+1.0, -1.0)" in paired.render([pair])


def test_a_pair_may_take_its_rows_from_two_tables(tmp_path, monkeypatch):
    (tmp_path / "t.json").write_text(json.dumps({"A/seed0": _entry("A", 0, 0.80, 0.30)}))
    (tmp_path / "u.json").write_text(json.dumps({"B/seed0": _entry("B", 0, 0.75, 0.10)}))
    monkeypatch.setattr(paired, "RESULTS", tmp_path)
    assert paired.compare("t+u", "A", "B")["diffs"]["overall"] == [5.0]
    assert paired.compare("t", "A", "B")["seeds"] == []


def test_a_difference_holds_only_if_it_does_on_every_subset(tmp_path, monkeypatch):
    main = {"A/seed0": _entry("A", 0, 0.80, 0.3), "B/seed0": _entry("B", 0, 0.78, 0.1)}
    (tmp_path / "ablation.json").write_text(json.dumps(main))
    (tmp_path / "baselines.json").write_text("{}")
    other = {
        "A, subset 1/seed1": _entry("A, subset 1", 1, 0.81, 0.3),
        "B, subset 1/seed1": _entry("B, subset 1", 1, 0.79, 0.1),
        "A, subset 2/seed2": _entry("A, subset 2", 2, 0.76, 0.3),
        "B, subset 2/seed2": _entry("B, subset 2", 2, 0.77, 0.1),
    }
    (tmp_path / "subsets.json").write_text(json.dumps(other))
    monkeypatch.setattr(paired, "RESULTS", tmp_path)
    pair = paired.compare_subsets("A", "B")
    assert pair["subsets"] == [0, 1, 2] and pair["diffs"]["overall"] == [2.0, 2.0, -1.0]
    assert paired.holds(pair["diffs"]["overall"]) == "no: the sign changes"
    assert (
        paired.holds([2.0, 2.0]) == "ahead on every subset" and paired.holds([1.0]) == "one subset"
    )
    assert "| A minus B | 0,1,2 |" in paired.render([pair])
