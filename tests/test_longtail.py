import numpy as np
import pytest

from camlt.data.longtail import counts_for_order, profile_counts, select_indices

TOTALS = {  # BENCHMARKS.md: (classes, n_max) -> {IF: training-set size}
    (10, 5000): {100: 12406, 50: 13996, 10: 20431},
    (100, 500): {100: 10847, 50: 12608, 10: 19573},
}


@pytest.mark.parametrize("key", TOTALS)
def test_exponential_profile_matches_published_totals(key):
    classes, n_max = key
    for imbalance, total in TOTALS[key].items():
        counts = profile_counts(classes, n_max, imbalance)
        assert sum(counts) == total
        assert counts[0] == n_max and counts[-1] == int(n_max / imbalance)


def test_step_profile():
    assert profile_counts(4, 100, 10, "step") == [100, 100, 10, 10]


def test_imbalance_below_one_is_refused():
    with pytest.raises(ValueError, match="below 1"):
        profile_counts(10, 5000, 0.5)


def test_hard_order_puts_rarest_ranks_on_upper_body_garments():
    counts = counts_for_order(10, 5000, 100, "exp", (1, 5, 7, 8, 9, 3, 0, 2, 4, 6))
    assert counts[1] == 5000 and counts[6] == 50  # trouser is the head, shirt the rarest
    assert sum(counts) == 12406


def test_same_seed_same_images_other_seed_other_images():
    labels = np.repeat(np.arange(5), 40)
    counts = [40, 20, 10, 5, 2]
    a, b = select_indices(labels, counts, 0), select_indices(labels, counts, 0)
    c = select_indices(labels, counts, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.bincount(labels[a]).tolist() == counts


def test_asking_more_than_a_class_has_is_refused():
    with pytest.raises(ValueError, match="class 1 has 3 images"):
        select_indices(np.array([0, 0, 0, 1, 1, 1]), [2, 4])
