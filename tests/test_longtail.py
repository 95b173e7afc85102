import numpy as np
import pytest

from camlt.data.longtail import counts_for_order, profile_counts, select_indices

TOTALS = {  # the field's training-set sizes: (classes, n_max) -> {IF: training-set size}
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


# ----------------------------------------------------------------------------- the shared rule
def shared_rule_by_hand(labels: list[int], n_max: int, imbalance: float, seed: int) -> list[int]:
    """The shared CIFAR-LT rule as its text states it, written out independently of camlt: the
    global legacy generator seeded once, each class's indices in file order shuffled in place,
    the first int(n_max * (1/IF) ** (i / (C - 1.0))) kept."""
    import numpy as np

    num = len(set(labels))
    np.random.seed(seed)
    targets = np.array(labels, dtype=np.int64)
    kept: list[int] = []
    for i, cls in enumerate(np.unique(targets)):
        n = int(n_max * ((1.0 / imbalance) ** (i / (num - 1.0))))
        idx = np.where(targets == cls)[0]
        np.random.shuffle(idx)
        kept += idx[:n].tolist()
    return sorted(kept)


def unpickle(path) -> dict:
    import pickle

    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="bytes")


@pytest.mark.parametrize(("classes", "split_seed"), [(10, 0), (10, 1), (100, 0), (100, 1)])
def test_cifar_lt_keeps_the_shared_subsets_images(tmp_path, classes, split_seed):
    from conftest import ROOT, write_cifar

    from camlt.config import load_config
    from camlt.data.benchmarks import build_datasets

    per_class = 12 if classes == 10 else 6
    folder = write_cifar(tmp_path, classes, per_class_train=per_class)
    if classes == 10:  # file order: data_batch_1..5 concatenated
        batches = [unpickle(folder / f"data_batch_{i}") for i in range(1, 6)]
        labels = [y for b in batches for y in b[b"labels"]]
        data = np.concatenate([b[b"data"] for b in batches])
    else:
        raw = unpickle(folder / "train")
        labels, data = raw[b"fine_labels"], raw[b"data"]
    recipe = "cifar10_lt.yaml" if classes == 10 else "cifar100_lt.yaml"
    cfg = load_config(
        ROOT / "configs" / recipe,
        [
            f"data.root={tmp_path}",
            f"data.n_max={per_class}",
            "data.imbalance=6",
            f"data.split_seed={split_seed}",
        ],
    )
    train, _ = build_datasets(cfg)
    expected = shared_rule_by_hand(labels, per_class, 6, split_seed)
    want = data[expected].reshape(-1, 3, 32, 32)
    assert train.meta["subset_rule"] == "shared" and len(train) == len(expected)
    assert np.array_equal(train.images.numpy(), want)  # image for image, in file order
    assert train.labels.tolist() == [labels[i] for i in expected]


def test_shared_counts_match_the_published_sizes():
    from camlt.data.longtail import shared_counts

    assert sum(shared_counts(10, 5000, 100, "exp")) == 12406
    assert sum(shared_counts(100, 500, 100, "exp")) == 10847
    assert sum(shared_counts(10, 5000, 50, "exp")) == 13996
    assert sum(shared_counts(100, 500, 10, "exp")) == 19573
    assert shared_counts(4, 100, 10, "step") == [100, 100, 10, 10]
