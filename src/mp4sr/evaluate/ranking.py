"""Full-ranking evaluation: every user's target is ranked against all items.

Users are scored in chunks (one matrix product per chunk), so memory is bounded by
``batch_size x n_items`` and no users x items matrix is ever held; on large catalogues the chunk
shrinks so that it holds at most ``SCORE_BUDGET`` scores (256 MiB of float32) whatever the catalogue.
Histories are sorted by length and a chunk holds at most ``TOKEN_BUDGET`` padded positions, so the
sequence encoder never runs over padding of short histories batched with long ones. On a GPU the
scores stay on the device: a chunk's target ranks are counted there and only they come back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mp4sr.data.batching import eval_batches, gather_windows
from mp4sr.data.split import EvalSet
from mp4sr.devices import to_device
from mp4sr.evaluate.metrics import DEFAULT_KS, mean_metrics, target_ranks
from mp4sr.models.base import Factorised, SequentialRecommender

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
    model: SequentialRecommender,
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

    A ``Factorised`` model whose users' scores of all items would not fit in ``SCORE_BUDGET`` is
    ranked by chunks of items instead (``user_vectors`` against slices of ``item_vectors``).
    """
    was_training = model.training
    model.eval()
    ranks = np.zeros(len(evalset), dtype=np.int64)
    n_items = int(model.n_items)
    by_items = isinstance(model, Factorised) and users_per_chunk(batch_size, n_items) < batch_size
    item_table = model.item_vectors().float() if by_items else None
    if not by_items:
        batch_size = users_per_chunk(batch_size, n_items)
    for batch in eval_batches(values, evalset, max_len, batch_size, shard, TOKEN_BUDGET):
        rows = batch.rows.numpy()
        seen = None
        if exclude_history:
            hist, real = gather_windows(
                values, torch.from_numpy(evalset.hist_start[rows]), torch.from_numpy(evalset.hist_end[rows])
            )
            r, c = torch.nonzero(real, as_tuple=True)
            seen = (to_device(r, device), to_device(hist[r, c] - 1, device))
        targets = to_device(batch.next_items, device)
        if by_items:
            users = model.user_vectors(batch.to(device)).float()
            chunk = max(1, SCORE_BUDGET // len(users))
            ranks[rows] = chunked_target_ranks(users, item_table, targets, chunk, seen).cpu().numpy()
            continue
        scores = model.full_sort_predict(batch.to(device)).float()
        if seen is not None:  # out of place: a model may return a view shared by every row (popularity)
            scores = scores.index_put(seen, scores.new_tensor(-torch.inf))
        ranks[rows] = target_ranks(scores, targets).cpu().numpy()
    model.train(was_training)
    mine = ranks if shard is None else ranks[np.arange(len(ranks)) % shard[1] == shard[0]]
    return RankingResult(ranks, mean_metrics(torch.from_numpy(mine), ks))


@torch.no_grad()
def chunked_target_ranks(users: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, chunk: int,
                         seen: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The 0-based rank of each target among ``users @ items.T``, computed ``chunk`` items at a time.

    Items clearly above or below a target's score are counted from the float32 chunk products; the
    few within a narrow band around it are compared again in float64, element by element, so that
    identical items tie exactly wherever their chunks fell, and ties are broken by item index as
    ``target_ranks`` does. ``seen``: (row, item) pairs scored -inf (excluded from the ranking)."""
    B, n = len(users), len(items)
    provisional = (users * items[targets]).sum(1)
    eps = 1e-4 * provisional.abs() + 1e-6  # far wider than any rounding difference of the two products
    if seen is not None:  # an excluded target scores -inf: it ties with the other excluded items
        excluded = seen[0][seen[1] == targets[seen[0]]]
        provisional[excluded], eps[excluded] = -torch.inf, 0.0
    low, high = (provisional - eps)[:, None], (provisional + eps)[:, None]
    above = torch.zeros(B, dtype=torch.long, device=users.device)
    band: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        scores = users @ items[start:stop].T
        if seen is not None:
            inside = (seen[1] >= start) & (seen[1] < stop)
            scores[seen[0][inside], seen[1][inside] - start] = -torch.inf
        above += (scores > high).sum(1)
        r, c = torch.nonzero((scores >= low) & (scores <= high), as_tuple=True)
        band.append((r, c + start, scores[r, c]))
    r, c, v = (torch.cat(parts) for parts in zip(*band))
    exact = (users.double() * items[targets].double()).sum(1)
    exact[provisional == -torch.inf] = -torch.inf
    v = torch.where(v == -torch.inf, v.double(), (users[r].double() * items[c].double()).sum(1))
    target_score = exact[r]
    before = (v > target_score) | ((v == target_score) & (c < targets[r]))
    return above + torch.bincount(r[before], minlength=B)


@torch.no_grad()
def topk_items(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k scores and item indexes of each row."""
    k = min(k, scores.shape[1])
    return torch.topk(scores, k, dim=1)
