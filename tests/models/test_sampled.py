"""Sampled softmax with log-Q correction: the candidate sets, the loss, and the bias it removes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mp4sr.models.base import ModelContext, build_model
from mp4sr.models.sampled import CandidateSampler, sampled_softmax_loss
from mp4sr.data.batching import SequenceBatch


def test_candidates_hold_every_target_once_and_the_expected_counts():
    counts = np.array([10.0, 5, 1, 0, 4])
    sampler = CandidateSampler(counts, 5, negatives=3, alpha=1.0)
    targets = torch.tensor([0, 0, 1, 4])
    cands = sampler.sample(targets, torch.Generator().manual_seed(0))
    assert torch.equal(cands.items, torch.unique(cands.items))
    assert torch.equal(cands.items[cands.labels], targets)
    p = counts / counts.sum()
    pj = p[cands.items.numpy()]
    expected = np.log(1 - (1 - pj) ** 4 * (1 - pj) ** 3)  # alpha 1: q == p
    assert np.allclose(cands.log_q.numpy(), expected, atol=1e-5)
    assert 3 not in cands.items.tolist()  # never drawn: count 0 and q(3) = 0


def test_loss_is_the_corrected_cross_entropy():
    sampler = CandidateSampler(np.array([3.0, 1, 1, 1]), 4, negatives=0)
    targets = torch.tensor([0, 2, 0])
    cands = sampler.sample(targets)
    logits = torch.randn(3, len(cands.items))
    direct = -(torch.log_softmax(logits / 0.5 - cands.log_q, dim=1)[torch.arange(3), cands.labels]).mean()
    assert torch.allclose(sampled_softmax_loss(logits, cands, 0.5), direct)


def _fit_free_logits(logq: bool, steps: int = 600) -> float:
    """Fit item logits to a Zipf distribution with in-batch candidates only; KL(true || learned)."""
    torch.manual_seed(0)
    n = 40
    true = 1.0 / torch.arange(1, n + 1).float() ** 1.2
    true = true / true.sum()
    sampler = CandidateSampler((true * 1e6).numpy(), n, negatives=0, logq=logq)
    theta = torch.zeros(n, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(steps):
        targets = torch.multinomial(true, 32, replacement=True)
        cands = sampler.sample(targets)
        loss = sampled_softmax_loss(theta[cands.items].expand(32, -1), cands)
        opt.zero_grad()
        loss.backward()
        opt.step()
    learned = torch.log_softmax(theta.detach(), 0)
    return float((true * (true.log() - learned)).sum())


def test_log_q_correction_removes_the_popularity_bias():
    corrected, plain = _fit_free_logits(True), _fit_free_logits(False)
    assert corrected < 0.02
    assert corrected < 0.25 * plain


@pytest.mark.parametrize("model", ["sasrec", "mp4sr"])
def test_sampled_loss_trains_and_matches_full_softmax_with_every_item_a_candidate(model):
    torch.manual_seed(0)
    n_items, dims = 30, 8
    features = None
    if model == "mp4sr":
        from mp4sr.models.items import ItemTable

        features = {m: ItemTable(torch.randn(n_items, 2, dims), torch.ones(n_items, 2, dtype=torch.bool))
                    for m in ("text", "image")}
    ctx = ModelContext(n_items=n_items, max_len=10, item_counts=np.ones(n_items), features=features)
    small = {"hidden": 16, "ffn": 32, "dropout": 0.0}
    if model == "sasrec":
        small["attn_dropout"] = 0.0
    else:
        small["adaptor_dropout"] = 0.0
    full = build_model(model, small, ctx).eval()
    sampled = build_model(model, {**small, "loss": "sampled", "negatives": 5000, "logq": False}, ctx).eval()
    sampled.load_state_dict(full.state_dict())
    tokens = torch.randint(1, n_items + 1, (4, 6))
    targets = torch.randint(0, n_items, (4, 6))
    batch = SequenceBatch(tokens, torch.full((4,), 6), torch.arange(4), targets=targets)
    # 5000 uniform draws over 30 items: every item is a candidate, so without log-Q the sampled
    # softmax is the full softmax.
    assert torch.allclose(full.calculate_loss(batch), sampled.calculate_loss(batch), atol=1e-5)
    sampled.train()
    loss = sampled.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in sampled.parameters())
