"""Ranking metrics computed from the 0-based rank of each user's target item."""

from __future__ import annotations

import torch

DEFAULT_KS = (5, 10, 20, 50)
METRICS = ("recall", "ndcg", "mrr")


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of ``targets[b]`` in ``scores[b]`` (descending). Ties are broken by item index,
    as a stable sort would: a model that scores every item alike gets no credit for it."""
    target_scores = scores.gather(1, targets[:, None])
    higher = (scores > target_scores).sum(1)
    idx = torch.arange(scores.shape[1], device=scores.device)
    tied_before = ((scores == target_scores) & (idx[None, :] < targets[:, None])).sum(1)
    return higher + tied_before


def metrics_from_ranks(ranks: torch.Tensor, ks=DEFAULT_KS) -> dict[str, torch.Tensor]:
    """Per-user Recall@K (= HR@K with one target), NDCG@K and MRR@K, as float tensors."""
    ranks = ranks.to(torch.float64)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = hit.double()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0)
        out[f"mrr@{k}"] = torch.where(hit, 1.0 / (ranks + 1.0), 0.0)
    return out


def mean_metrics(ranks: torch.Tensor, ks=DEFAULT_KS) -> dict[str, float]:
    return {name: float(v.mean()) for name, v in metrics_from_ranks(ranks, ks).items()}
