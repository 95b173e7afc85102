"""The CAMC cost benchmark's bookkeeping: the ratio's interval, the allocator, merged rows."""

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import camc_cost  # noqa: E402


def test_intervals_bracket_their_figure_and_narrow_with_steadier_rounds():
    noisy = [(10.0, 9.0), (10.0, 12.0), (9.0, 9.0), (8.0, 9.2), (10.0, 9.5), (9.0, 9.9)]
    steady = [(10.0, 10.1), (10.0, 10.2), (9.0, 9.0), (8.0, 8.1), (10.0, 10.1), (9.0, 9.1)]
    for statistic in (camc_cost.median_ratio, camc_cost.total_ratio):
        low, high = camc_cost.bootstrap_ci(noisy, statistic)
        assert low <= statistic(noisy) <= high
        assert camc_cost.bootstrap_ci(noisy, statistic) == (low, high)  # seeded: a rerun agrees
        steady_low, steady_high = camc_cost.bootstrap_ci(steady, statistic)
        assert steady_high - steady_low < (high - low) / 4


def test_one_slow_round_moves_the_total_but_not_the_median():
    rounds = [(10.0, 10.0), (10.0, 10.0), (10.0, 20.0)]
    assert camc_cost.median_ratio(rounds) == 1.0
    assert camc_cost.total_ratio(rounds) == pytest.approx(40 / 30)


@pytest.mark.parametrize(
    ("preload", "conf", "expected"),
    [
        ("", "", "glibc"),
        (
            "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
            "dirty_decay_ms:-1",
            "jemalloc (dirty_decay_ms:-1)",
        ),
        ("/usr/lib/libtcmalloc_minimal.so.4", "", "tcmalloc"),
    ],
)
def test_the_allocator_is_read_from_the_preload(preload, conf, expected):
    assert camc_cost.allocator({"LD_PRELOAD": preload, "MALLOC_CONF": conf}) == expected


def _row(backbone: str, allocator: str | None, ratio: float) -> dict:
    row = {"backbone": backbone, "step_time_ratio": ratio}
    if allocator is not None:  # rows written before the allocator was recorded have none
        row["allocator"] = allocator
    return row


def test_a_run_replaces_its_own_allocator_rows_and_keeps_the_others_of_the_same_machine():
    old = {
        "machine": "Xeon (1 threads)",
        "rows": [_row("resnet50", None, 1.08), _row("resnet50", "jemalloc", 1.01)],
    }
    new = [_row("resnet50", "glibc", 1.03)]
    merged = camc_cost.merge_rows(old, new, "Xeon (1 threads)")
    assert [(r.get("allocator"), r["step_time_ratio"]) for r in merged] == [
        ("jemalloc", 1.01),
        ("glibc", 1.03),
    ]
    assert camc_cost.merge_rows(old, new, "NVIDIA H200") == new  # another machine: a new table
    assert camc_cost.merge_rows({}, new, "Xeon (1 threads)") == new


def test_the_fault_cost_is_the_slope_of_step_time_on_faults_and_vanishes_without_faults():
    per_fault = 5e-6
    faults = {"normalized": [100_000, 200_000, 150_000], "camc": [300_000, 250_000, 350_000]}
    step_s = {h: [1.0 + per_fault * f for f in faults[h]] for h in faults}
    slope, share = camc_cost.fault_cost({"faults_per_step": faults, "step_s": step_s})
    assert slope == pytest.approx(per_fault)
    assert share == pytest.approx(per_fault * 150_000 / (1.0 + per_fault * 150_000))
    quiet = {"normalized": [0, 0, 40], "camc": [0, 0, 0]}  # a caching allocator: stray faults
    assert camc_cost.fault_cost({"faults_per_step": quiet, "step_s": step_s}) is None
    assert camc_cost.fault_cost({"step_s": step_s}) is None  # rows from before faults were counted
