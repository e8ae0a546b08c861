"""Cold-start groups and the cold-item split."""

import numpy as np
import pytest
import torch

from mp4sr.data import Dataset, ItemCatalogue, Sequences, leave_one_out
from mp4sr.errors import DataError
from mp4sr.evaluate import metrics_from_ranks
from mp4sr.evaluate.coldstart import ITEM_GROUPS, assign_groups, cold_item_split, coldstart_table


def _toy(seqs, n_items=None):
    n_items = n_items or max(max(s) for s in seqs) + 1
    return Dataset("toy", ItemCatalogue(np.arange(n_items).astype(str)), np.arange(len(seqs)).astype(str),
                   Sequences.from_lists(seqs))


def test_group_bounds_are_inclusive():
    labels = assign_groups(np.array([0, 1, 5, 6, 20, 21, 500]), ITEM_GROUPS)
    assert labels.tolist() == ["0", "1-5", "1-5", "6-20", "6-20", ">20", ">20"]


def test_table_groups_users_by_target_popularity_and_history():
    # item 9 is only ever a test item (0 training interactions); item 1 is in every training part
    seqs = [[1, 2, 3, 9], [1, 4, 5, 6, 7, 8, 2, 3, 9], [1, 2, 3, 1], [1, 5, 3, 2]]
    split = leave_one_out(_toy(seqs))
    ranks = np.array([0, 4, 20, 1])
    table = coldstart_table(ranks, split, ks=(5,))
    by_item = table[table["by"] == "item_count"].set_index("group")
    assert by_item["n_users"].to_dict() == {"0": 2, "1-5": 2, "6-20": 0, ">20": 0}
    per_user = metrics_from_ranks(torch.tensor(ranks), (5,))
    assert by_item.loc["0", "ndcg@5"] == pytest.approx(float(per_user["ndcg@5"][:2].mean()))
    assert by_item.loc["1-5", "recall@5"] == pytest.approx(0.5)
    assert np.isnan(by_item.loc["6-20", "ndcg@5"])
    by_history = table[table["by"] == "history"].set_index("group")
    assert by_history["n_users"].to_dict() == {"1-3": 3, "4-7": 0, "8-15": 1, ">15": 0}
    assert table["n_users"].sum() == 2 * len(seqs)


def test_table_refuses_ranks_of_another_split():
    split = leave_one_out(_toy([[1, 2, 3], [2, 3, 4]]))
    with pytest.raises(DataError, match="3 ranks for 2 test users"):
        coldstart_table(np.zeros(3, dtype=int), split)


def test_cold_items_occur_only_as_test_items(scientific_mm):
    cold = cold_item_split(scientific_mm, fraction=0.2, seed=3)
    split = leave_one_out(cold.dataset)
    assert len(cold.cold_items) == round(0.2 * scientific_mm.n_items)
    assert split.train_counts()[cold.cold_items].sum() == 0
    assert not np.isin(split.valid.targets, cold.cold_items).any()
    items, offsets = cold.dataset.sequences.items, cold.dataset.sequences.offsets
    history = np.ones(len(items), dtype=bool)
    history[offsets[1:] - 1] = False
    assert not np.isin(items[history], cold.cold_items).any()
    # every kept user keeps their original test item, and some of those are cold
    original_last = scientific_mm.sequences.items[scientific_mm.sequences.offsets[1:] - 1]
    assert np.array_equal(split.test.targets, original_last[cold.users])
    assert np.isin(split.test.targets, cold.cold_items).sum() > 100
    # the catalogue is untouched, so item features still line up; users left too short are dropped
    assert cold.dataset.items is scientific_mm.items
    assert (cold.dataset.sequences.lengths >= 3).all() and 0 < len(cold.users) <= scientific_mm.n_users


def test_cold_split_is_seeded_and_drops_short_users():
    ds = _toy([[0, 1, 2, 3], [4, 5, 6, 7], [0, 4, 8]], n_items=10)
    a, b = cold_item_split(ds, 0.3, seed=1), cold_item_split(ds, 0.3, seed=1)
    assert np.array_equal(a.cold_items, b.cold_items) and np.array_equal(a.users, b.users)
    for user, seq in zip(a.users, [a.dataset.sequences[u] for u in range(a.dataset.n_users)]):
        original = ds.sequences[user]
        assert seq[-1] == original[-1]
        assert seq[:-1].tolist() == [i for i in original[:-1] if i not in set(a.cold_items)]
    with pytest.raises(DataError, match="fraction"):
        cold_item_split(ds, 1.5)
