"""Class-aware samplers: frequencies, determinism, and their wiring into the training loader."""

import math

import pytest
import torch

from camlt import engine
from camlt.config import ConfigError
from camlt.data import BatchLoader
from camlt.data.samplers import ProgressiveSampler, allocate, build_sampler
from camlt.preflight import check_run

COUNTS = [500, 120, 40, 9, 1]
LABELS = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])[
    torch.randperm(sum(COUNTS), generator=torch.Generator().manual_seed(0))
]


def draw(name: str, epoch: int = 0, seed: int = 0, epochs: int = 10) -> torch.Tensor:
    sampler = build_sampler(name, LABELS, epochs)
    return sampler(epoch, torch.Generator().manual_seed(seed))


def class_frequencies(indices: torch.Tensor) -> torch.Tensor:
    return torch.bincount(LABELS[indices], minlength=len(COUNTS)).double() / len(indices)


def test_class_balanced_sampler_draws_each_class_equally_often():
    idx = draw("class")
    assert len(idx) == len(LABELS)  # an epoch keeps its length
    # Tolerance: the draws per class are the exact share rounded, so within one draw of N/K.
    per_class = torch.bincount(LABELS[idx], minlength=len(COUNTS))
    assert (per_class - len(LABELS) / len(COUNTS)).abs().max() <= 1
    # the single image of the rarest class is repeated, the head class is subsampled
    assert (idx == torch.nonzero(LABELS == 4).item()).sum() == per_class[4]


def test_square_root_sampler_matches_sqrt_counts():
    expected = torch.tensor([math.sqrt(n) for n in COUNTS], dtype=torch.float64)
    expected /= expected.sum()
    got = class_frequencies(draw("sqrt"))
    assert torch.allclose(got, expected, atol=1.0 / len(LABELS))  # within one draw per class


def test_progressive_sampler_moves_from_instance_to_class_balanced():
    instance = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    uniform = torch.full((len(COUNTS),), 1.0 / len(COUNTS), dtype=torch.float64)
    sampler = ProgressiveSampler(LABELS, epochs=4)
    assert torch.allclose(sampler.shares(0), instance)
    assert torch.allclose(sampler.shares(2), (instance + uniform) / 2)
    assert torch.allclose(sampler.shares(4), uniform)
    tol = 1.0 / len(LABELS)
    assert torch.allclose(
        class_frequencies(draw("progressive", 2, epochs=4)), sampler.shares(2), atol=tol
    )


def test_instance_balanced_is_the_loaders_plain_shuffle():
    assert build_sampler("instance", LABELS, 10) is None


def test_samplers_are_deterministic_given_their_generator():
    # the loader seeds the generator from (seed, epoch); see the loader test below
    for name in ("class", "sqrt", "progressive"):
        assert torch.equal(draw(name, 3, seed=5), draw(name, 3, seed=5))
        assert not torch.equal(draw(name, 3, seed=5), draw(name, 3, seed=6))


def test_images_within_a_class_are_drawn_evenly():
    idx = draw("class")  # the 120-image class gets 134 draws: every image once, 14 twice
    members = torch.nonzero(LABELS == 1).flatten()
    hits = torch.tensor([(idx == m).sum() for m in members])
    assert hits.min() >= 1 and hits.max() <= 2


def test_allocate_keeps_the_total():
    shares = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    assert allocate(shares, 7).tolist() == [3, 2, 2]  # 3.5, 1.75, 1.75: largest remainders
    assert int(allocate(torch.full((3,), 1 / 3, dtype=torch.float64), 10).sum()) == 10


def test_unknown_sampler_names_the_valid_ones(tiny_cfg):
    with pytest.raises(
        ValueError, match="data.sampler='oversample'.*instance, class, sqrt, progressive"
    ):
        build_sampler("oversample", LABELS, 10)
    with pytest.raises(ConfigError, match="data.sampler='oversample'.*instance, class, sqrt"):
        check_run(tiny_cfg("data.sampler=oversample"))


def test_engine_wires_the_configured_sampler(tiny_cfg, tmp_path):
    run = engine.build_run(tiny_cfg("data.sampler=class"), tmp_path / "run")
    assert run.train_loader.sampler is not None
    labels = torch.cat([y for _, y in run.train_loader])
    per_class = torch.bincount(labels, minlength=10)
    # 10 classes of 30..3 images, 16-image batches: all full batches drawn, near 1/10 each
    assert per_class.max() - per_class.min() <= 3
    plain = engine.build_run(tiny_cfg(), tmp_path / "plain")
    assert plain.train_loader.sampler is None


def test_loader_with_sampler_repeats_an_epoch_exactly(tiny_cfg, tmp_path):
    run = engine.build_run(tiny_cfg("data.sampler=sqrt"), tmp_path / "run")
    loader: BatchLoader = run.train_loader
    loader.set_epoch(1)
    first = torch.cat([y for _, y in loader])
    loader.set_epoch(2)
    other = torch.cat([y for _, y in loader])
    loader.set_epoch(1)
    assert torch.equal(first, torch.cat([y for _, y in loader]))
    assert not torch.equal(first, other)
