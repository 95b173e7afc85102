"""ProCo (model.head=proco): the log-Bessel function against its power series, the contrastive
logits and loss by hand, the class statistics across epochs, a resumed run bit for bit, and two
processes adding the same statistics as one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from reliability_helpers import kill_after_first_checkpoint

from camlt import engine
from camlt.checkpoint import load_checkpoint
from camlt.heads.proco import ProCoHead, ProCoSettings, log_bessel_i
from camlt.losses import PriorShiftedCE

COUNTS = [30, 10, 3]


def log_bessel_series(order: float, x: float, terms: int = 40_000) -> float:
    """log I_order(x) from its power series sum_k (x/2)^(2k+order) / (k! Gamma(k+order+1))."""
    k = torch.arange(terms, dtype=torch.float64)
    logs = (2 * k + order) * math.log(x / 2) - torch.lgamma(k + 1) - torch.lgamma(k + order + 1)
    return torch.logsumexp(logs, 0).item()


@pytest.mark.parametrize("order", [15, 63, 127])
@pytest.mark.parametrize("x", [0.3, 5.0, 60.0, 900.0, 6000.0])
def test_log_bessel_matches_its_power_series(order, x):
    got = log_bessel_i(order, torch.tensor([x], dtype=torch.float64)).item()
    assert got == pytest.approx(log_bessel_series(order, x), rel=1e-6, abs=1e-6)


def log_c(p: int, kappa: float) -> float:
    """log C_p(kappa) through the series, by hand."""
    v = p / 2 - 1
    return v * math.log(kappa) - (p / 2) * math.log(2 * math.pi) - log_bessel_series(v, kappa)


def head_with_statistics(p: int = 32) -> ProCoHead:
    torch.manual_seed(0)
    head = ProCoHead(8, 3, ProCoSettings(dim=p, tau=0.5, weight=0.7))
    means = F.normalize(torch.randn(3, p, dtype=torch.float64), dim=1) * torch.tensor(
        [[0.9], [0.5], [0.2]], dtype=torch.float64
    )
    head.means.copy_(means)
    head.ready.fill_(True)
    return head


def test_contrastive_logits_and_loss_by_hand():
    p = 32
    head = head_with_statistics(p)
    h = F.normalize(torch.randn(2, p), dim=1)
    got = head.contrastive_logits(h)
    for i in range(2):
        for c in range(3):
            m = head.means[c]
            r = m.norm().item()
            kappa = r * (p - r * r) / (1 - r * r)
            shifted = (kappa * m / r + h[i].double() / 0.5).norm().item()
            by_hand = log_c(p, shifted) - log_c(p, kappa)
            assert got[i, c].item() == pytest.approx(by_hand, rel=1e-4, abs=1e-4)
    # the head's loss with balanced softmax: CE(z + log pi) + 0.7 CE(a + log pi), ProCo's form
    fmap, y = torch.randn(2, 8, 2, 2), torch.tensor([0, 2])
    head.train()
    out = head(fmap, y)
    prior = torch.tensor(COUNTS, dtype=torch.float32) / sum(COUNTS)
    expected = F.cross_entropy(out.logits + prior.log(), y) + 0.7 * F.cross_entropy(
        out.aux_logits + prior.log(), y
    )
    loss = out.loss(y, PriorShiftedCE(COUNTS, 1.0))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_statistics_of_an_epoch_become_the_estimate_at_the_next():
    head = ProCoHead(4, 3, ProCoSettings(dim=8))
    h = F.normalize(torch.randn(6, 8), dim=1)
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    head._accumulate(h, y)
    assert not head.ready.any()  # epoch 0 uses its running means
    running, _ = head.estimate()
    assert torch.allclose(running[0], F.normalize(h[:2].mean(0), dim=0), atol=1e-6)
    head.set_epoch(1)
    assert head.ready.all() and head.counts.sum() == 0
    assert torch.allclose(head.means[1].float(), h[2:5].mean(0), atol=1e-6)
    before = head.means.clone()
    head.set_epoch(1)  # a resumed run's repeat of the same epoch changes nothing
    assert torch.equal(head.means, before)


def test_a_proco_run_resumes_bit_identically(tiny_cfg, tmp_path, monkeypatch):
    extra = ("model.head=proco", "loss.name=balanced_softmax", "model.proco.dim=16")
    full = engine.train(tiny_cfg(*extra, f"train.run_dir={tmp_path / 'full'}"), tmp_path / "full")
    cfg = tiny_cfg(*extra, f"train.run_dir={tmp_path / 'killed'}")
    kill_after_first_checkpoint(cfg, tmp_path / "killed", monkeypatch)
    assert engine.train(cfg, tmp_path / "killed", resume=True) == full
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["head.ready"].all() and int(a["head.stats_epoch"]) == 1


def _accumulate_on_rank(rank: int, world: int, store: str, h, y, out) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                         world_size=world)  # fmt: skip
    head = ProCoHead(4, 3, ProCoSettings(dim=8))
    half = len(y) // world
    head._accumulate(h[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half])
    out[rank] = torch.cat([head.sums.flatten(), head.counts])
    torch.distributed.destroy_process_group()


def test_two_processes_add_the_statistics_of_one(tmp_path):
    torch.manual_seed(0)
    h, y = F.normalize(torch.randn(8, 8), dim=1), torch.tensor([0, 1, 2, 0, 1, 1, 2, 0])
    one = ProCoHead(4, 3, ProCoSettings(dim=8))
    one._accumulate(h, y)
    expected = torch.cat([one.sums.flatten(), one.counts])
    out = mp.Manager().dict()
    mp.spawn(_accumulate_on_rank, args=(2, str(tmp_path / "store"), h, y, out), nprocs=2)
    for rank in (0, 1):
        assert torch.allclose(out[rank], expected, atol=1e-12)
