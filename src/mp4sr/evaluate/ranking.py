"""Full-ranking evaluation: every user's target is ranked against all items.

Users are scored in chunks (one matrix product per chunk), so memory is bounded by
``batch_size x n_items`` and no users x items matrix is ever held; on large catalogues the chunk
shrinks so that it holds at most ``SCORE_BUDGET`` scores (256 MiB of float32) whatever the catalogue.
Histories are sorted by length and a chunk holds at most ``TOKEN_BUDGET`` padded positions, so the
sequence encoder never runs over padding of short histories batched with long ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mp4sr.data.batching import eval_batches, gather_windows
from mp4sr.data.split import EvalSet
from mp4sr.evaluate.metrics import DEFAULT_KS, mean_metrics, target_ranks

SCORE_BUDGET = 1 << 26  # scores held at once by a chunk of users
TOKEN_BUDGET = 8192  # padded history positions per chunk: many short histories at once, few long ones


def users_per_chunk(batch_size: int, n_items: int, budget: int | None = None) -> int:
    """The chunk of users whose scores of all items fit in ``budget`` (default ``SCORE_BUDGET``),
    at least one user."""
    budget = SCORE_BUDGET if budget is None else budget
    return max(1, min(batch_size, budget // max(n_items, 1)))


@dataclass
class RankingResult:
    """0-based rank of each evaluation example's target (in the order of the EvalSet) and the means."""

    ranks: np.ndarray
    metrics: dict[str, float]


@torch.no_grad()
def full_ranking(
    model,
    values: torch.Tensor,
    evalset: EvalSet,
    max_len: int = 50,
    ks=DEFAULT_KS,
    batch_size: int = 1024,
    exclude_history: bool = False,
    device: str | torch.device = "cpu",
    shard: tuple[int, int] | None = None,
) -> RankingResult:
    """Rank every target among all items with ``model.full_sort_predict``.

    ``exclude_history`` removes the items of the user's whole history from the ranking (a repeated
    target then counts as a miss). It is off by default because the standard sequential protocol
    (RecBole, UniSRec, MISSRec, the MP4SR paper) ranks all items, and repeat interactions are real.

    ``shard=(i, n)``: rank only the examples whose index is i modulo n (the others' ranks are 0 and
    the metrics cover the shard); distributed evaluation sums the shards' ranks.
    """
    was_training = model.training
    model.eval()
    ranks = np.zeros(len(evalset), dtype=np.int64)
    batch_size = users_per_chunk(batch_size, int(getattr(model, "n_items", 0)))
    for batch in eval_batches(values, evalset, max_len, batch_size, shard, TOKEN_BUDGET):
        scores = model.full_sort_predict(batch.to(device)).float()
        if exclude_history:
            rows = batch.rows.numpy()
            hist, real = gather_windows(
                values, torch.from_numpy(evalset.hist_start[rows]), torch.from_numpy(evalset.hist_end[rows])
            )
            r, c = torch.nonzero(real, as_tuple=True)
            scores[r.to(device), (hist[r, c] - 1).to(device)] = -torch.inf
        ranks[batch.rows.numpy()] = target_ranks(scores, batch.next_items.to(device)).cpu().numpy()
    model.train(was_training)
    mine = ranks if shard is None else ranks[np.arange(len(ranks)) % shard[1] == shard[0]]
    return RankingResult(ranks, mean_metrics(torch.from_numpy(mine), ks))


@torch.no_grad()
def topk_items(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k scores and item indexes of each row."""
    k = min(k, scores.shape[1])
    return torch.topk(scores, k, dim=1)
