"""Sampled softmax with log-Q correction: the candidate sets, the loss, and the bias it removes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mp4sr.errors import ConfigError
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


def test_negatives_per_position_give_each_output_its_positive_and_its_own_negatives():
    sampler = CandidateSampler(np.ones(50), 50, negatives=7, per_position=True)
    targets = torch.tensor([3, 3, 10, 49])
    cands = sampler.sample(targets, torch.Generator().manual_seed(1))
    assert torch.equal(cands.items[cands.labels], targets)
    assert cands.negatives.shape == (4, 7)
    logits = torch.randn(4, len(cands.items))
    rows = [torch.cat([logits[i, cands.labels[i]][None], logits[i, cands.negatives[i]]]) for i in range(4)]
    for i, row in enumerate(rows):  # a drawn item equal to the row's positive is not its negative
        row[1:][cands.negatives[i] == cands.labels[i]] = float("-inf")
    direct = torch.stack([-torch.log_softmax(r, 0)[0] for r in rows]).mean()
    # uniform q: the log-Q term is one constant, which the softmax ignores
    assert torch.allclose(sampled_softmax_loss(logits, cands), direct, atol=1e-6)
    # the rows differ: two outputs with the same target get different negatives
    assert not torch.equal(cands.items[cands.negatives[0]], cands.items[cands.negatives[1]])


def test_negatives_per_position_train_sasrec_and_leave_out_in_batch_negatives():
    torch.manual_seed(0)
    ctx = ModelContext(n_items=30, max_len=10, item_counts=np.ones(30))
    model = build_model("sasrec", {"hidden": 16, "ffn": 32, "loss": "sampled", "negatives": 4,
                                   "negatives_per": "position"}, ctx)
    tokens = torch.randint(1, 31, (4, 6))
    batch = SequenceBatch(tokens, torch.full((4,), 6), torch.arange(4), targets=torch.randint(0, 30, (4, 6)))
    loss = model.calculate_loss(batch)
    loss.backward()
    # a softmax over 1 positive and at most 4 negatives: the loss of uniform logits is at most log(5)
    assert torch.isfinite(loss) and model.item_embedding.weight.grad.abs().sum() > 0
    flat = build_model("sasrec", {"hidden": 16, "ffn": 32, "loss": "sampled", "negatives": 4,
                                  "negatives_per": "position"}, ctx)
    with torch.no_grad():
        for p in flat.parameters():
            p.zero_()
    assert float(flat.eval().calculate_loss(batch).detach()) <= np.log(5) + 1e-6


def test_negatives_per_position_need_at_least_one():
    with pytest.raises(ConfigError, match="negatives >= 1"):
        CandidateSampler(np.ones(5), 5, negatives=0, per_position=True)
