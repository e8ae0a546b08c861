import math

import numpy as np
import pytest
import torch

from mp4sr.data import Dataset, ItemCatalogue, Sequences, leave_one_out
from mp4sr.evaluate import full_ranking, mean_metrics, target_ranks
from mp4sr.models.base import ModelConfig, ModelContext, SequentialRecommender


def test_ranks_break_ties_by_item_index():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]])
    assert target_ranks(scores, torch.tensor([2, 3])).tolist() == [1, 3]
    assert target_ranks(scores, torch.tensor([3, 0])).tolist() == [2, 0]


def test_metric_values():
    m = mean_metrics(torch.tensor([0, 4, 9, 30]), ks=(5, 10))
    assert m["recall@5"] == pytest.approx(0.5)
    assert m["recall@10"] == pytest.approx(0.75)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(6) + 1 / math.log2(11)) / 4)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 5) / 4)


class _Fixed(SequentialRecommender):
    """Scores every item by a fixed table, whatever the history."""

    def __init__(self, table):
        super().__init__(ModelConfig(), ModelContext(n_items=len(table)))
        self.table = torch.as_tensor(table, dtype=torch.float32)

    def calculate_loss(self, batch):
        raise NotImplementedError  # never trained

    def full_sort_predict(self, batch):
        return self.table[None].expand(len(batch), -1).clone()


def _toy():
    seqs = [[0, 1, 2, 3], [4, 0, 1, 0], [2, 3, 4, 1]]
    return Dataset("toy", ItemCatalogue(np.arange(5).astype(str)), np.arange(3).astype(str), Sequences.from_lists(seqs))


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_full_ranking_is_independent_of_chunking(batch_size):
    split = leave_one_out(_toy())
    model = _Fixed([0.0, 4.0, 3.0, 2.0, 1.0])
    values = torch.from_numpy(split.dataset.sequences.items)
    result = full_ranking(model, values, split.test, batch_size=batch_size)
    assert result.ranks.tolist() == [2, 4, 0]  # targets 3, 0, 1 in the order of the users
    assert result.metrics["recall@5"] == 1.0


def test_exclude_history_drops_seen_items():
    split = leave_one_out(_toy())
    model = _Fixed([0.0, 4.0, 3.0, 2.0, 1.0])
    values = torch.from_numpy(split.dataset.sequences.items)
    result = full_ranking(model, values, split.test, exclude_history=True, ks=(5,))
    # user 0 saw 0,1,2: item 3 is now first; user 1 saw 4,0,1 and its target 0 is a repeat, so it
    # falls behind the two items it never saw
    assert result.ranks.tolist() == [0, 2, 0]


def test_exclude_history_with_scores_shared_by_every_user():
    """A model may return one row of scores expanded to the batch (popularity does): excluding one
    user's history must not remove those items for the other users of the batch."""
    from mp4sr.models import ModelContext, build_model

    split = leave_one_out(_toy())
    pop = build_model("pop", {}, ModelContext(5, item_counts=np.array([0.0, 4.0, 3.0, 2.0, 1.0])))
    values = torch.from_numpy(split.dataset.sequences.items)
    fixed = full_ranking(_Fixed([0.0, 4.0, 3.0, 2.0, 1.0]), values, split.test, exclude_history=True, ks=(5,))
    together = full_ranking(pop, values, split.test, exclude_history=True, ks=(5,), batch_size=64)
    assert together.ranks.tolist() == fixed.ranks.tolist() == [0, 2, 0]


def test_score_budget_bounds_the_user_chunk(monkeypatch):
    from mp4sr.evaluate import ranking

    assert ranking.users_per_chunk(1024, 1_000_000) == (1 << 26) // 1_000_000  # 67 users of a 1M catalogue
    assert ranking.users_per_chunk(1024, 10) == 1024 and ranking.users_per_chunk(8, 10**9) == 1
    seen = []
    real = ranking.eval_batches

    def spy(values, evalset, max_len, batch_size, shard=None, max_tokens=None):
        seen.append(batch_size)
        return real(values, evalset, max_len, batch_size, shard, max_tokens)

    monkeypatch.setattr(ranking, "SCORE_BUDGET", 10)  # 5 items: 2 users per chunk
    monkeypatch.setattr(ranking, "eval_batches", spy)
    split = leave_one_out(_toy())
    model = _Fixed([0.0, 4.0, 3.0, 2.0, 1.0])
    result = ranking.full_ranking(model, torch.from_numpy(split.dataset.sequences.items), split.test, batch_size=64)
    assert seen == [2] and result.ranks.tolist() == [2, 4, 0]


@pytest.mark.parametrize("max_tokens", [1, 4, 7, None])
def test_token_budget_batches_cover_every_example_once(max_tokens):
    from mp4sr.data.batching import eval_batches

    split = leave_one_out(_toy())
    values = torch.from_numpy(split.dataset.sequences.items)
    batches = list(eval_batches(values, split.valid, 50, 64, None, max_tokens))
    assert sorted(int(r) for b in batches for r in b.rows) == [0, 1, 2]
    if max_tokens is not None:
        assert all(len(b) == 1 or b.tokens.numel() <= max_tokens for b in batches)


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_chunked_ranks_equal_full_ranks_with_ties_and_exclusions(chunk):
    from mp4sr.evaluate.ranking import chunked_target_ranks

    g = torch.Generator().manual_seed(0)
    users = torch.randn(12, 4, generator=g)
    items = torch.randn(20, 4, generator=g)
    items[5] = items[11] = items[17]  # identical items tie
    targets = torch.tensor([17, 5, 0, 11, 19, 3, 3, 17, 8, 1, 2, 11])
    seen = (torch.tensor([0, 0, 1, 4, 6]), torch.tensor([5, 17, 2, 19, 3]))  # rows 0, 4, 6 saw their target
    scores = (users[:, None, :].double() * items[None].double()).sum(-1)  # exact ties for identical items
    for excl in (None, seen):
        full = scores.clone()
        if excl is not None:
            full[excl] = -torch.inf
        expected = target_ranks(full, targets)
        assert torch.equal(chunked_target_ranks(users, items, targets, chunk, excl), expected)


@pytest.mark.parametrize("model_name", ["sasrec", "mp4sr"])
def test_large_catalogue_path_ranks_like_the_full_scores(model_name, monkeypatch):
    from mp4sr.evaluate import ranking
    from mp4sr.models.base import ModelContext, build_model

    seqs = [list(np.random.default_rng(u).integers(0, 40, 6)) for u in range(30)]
    ds = Dataset("toy", ItemCatalogue(np.arange(40).astype(str)), np.arange(30).astype(str), Sequences.from_lists(seqs))
    split = leave_one_out(ds)
    features = None
    if model_name == "mp4sr":
        from mp4sr.models.items import ItemTable

        features = {m: ItemTable(torch.randn(40, 2, 8), torch.ones(40, 2, dtype=torch.bool)) for m in ("text", "image")}
    torch.manual_seed(0)
    model = build_model(model_name, {"hidden": 16, "ffn": 32}, ModelContext(40, 10, split.train_counts(), features))
    values = torch.from_numpy(ds.sequences.items)
    full = ranking.full_ranking(model, values, split.test, 10, exclude_history=True)
    monkeypatch.setattr(ranking, "SCORE_BUDGET", 64)  # 40 items x 64 users > 64 scores: chunks of items
    chunked = ranking.full_ranking(model, values, split.test, 10, batch_size=64, exclude_history=True)
    assert np.array_equal(full.ranks, chunked.ranks)
