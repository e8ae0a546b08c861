import numpy as np
import pytest
import torch

from mp4sr.data import Dataset, ItemCatalogue, Sequences, leave_one_out, train_batches
from mp4sr.data.batching import IGNORE, eval_batches
from mp4sr.errors import DataError


def _toy(seqs):
    n_items = max(max(s) for s in seqs) + 1
    return Dataset("toy", ItemCatalogue(np.arange(n_items).astype(str)), np.arange(len(seqs)).astype(str),
                   Sequences.from_lists(seqs))


def test_leave_one_out_targets():
    ds = _toy([[0, 1, 2, 3, 4], [5, 6, 7]])
    split = leave_one_out(ds)
    assert split.valid.targets.tolist() == [3, 6]
    assert split.test.targets.tolist() == [4, 7]
    assert split.train_counts().tolist() == [1, 1, 1, 0, 0, 1, 0, 0]


def test_short_users_are_refused():
    with pytest.raises(DataError, match="fewer than 3"):
        leave_one_out(_toy([[0, 1, 2, 3], [4, 5]]))


@pytest.mark.parametrize("max_len", [1, 2, 3, 50])
def test_sequence_windows_cover_every_prefix_target_once(max_len):
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 20, rng.integers(3, 15)).tolist() for _ in range(30)]
    split = leave_one_out(_toy(seqs))
    seq_ex, pre_ex = split.train_examples("sequence", max_len), split.train_examples("prefix", max_len)
    assert ((seq_ex.end - seq_ex.start) <= max_len).all()
    # the targets of the windows, position by position, are exactly the prefix targets
    seq_targets = np.sort(np.concatenate([np.arange(s + 1, e + 1) for s, e in zip(seq_ex.start, seq_ex.end)]))
    assert len(seq_targets) == len(pre_ex) == sum(len(s) - 3 for s in seqs)
    assert seq_targets.tolist() == np.sort(pre_ex.end).tolist()


@pytest.mark.parametrize("mode", ["sequence", "prefix"])
def test_batches_hold_the_right_items(mode):
    seqs = [[0, 1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12]]
    ds = _toy(seqs)
    split = leave_one_out(ds)
    ex = split.train_examples(mode, 50)
    values = torch.from_numpy(ds.sequences.items)
    batches = list(train_batches(values, ex, batch_size=2, generator=np.random.default_rng(0)))
    pairs = set()
    for b in batches:
        assert b.tokens.shape[1] == int(b.lengths.max())  # padded to the batch's longest only
        for row in range(len(b)):
            n = int(b.lengths[row])
            assert (b.tokens[row, n:] == 0).all()
            hist = (b.tokens[row, :n] - 1).tolist()
            for p in range(n):
                if b.targets[row, p] != IGNORE:
                    pairs.add((tuple(hist[: p + 1]), int(b.targets[row, p])))
    expected = {(tuple(s[:t]), s[t]) for s in seqs for t in range(1, len(s) - 2)}
    assert pairs == expected


def test_eval_batches_truncate_to_max_len():
    ds = _toy([[0, 1, 2, 3, 4, 5, 6], [7, 8, 9]])
    split = leave_one_out(ds)
    values = torch.from_numpy(ds.sequences.items)
    (batch,) = list(eval_batches(values, split.test, max_len=3, batch_size=8))
    rows = {int(r): i for i, r in enumerate(batch.rows)}
    assert (batch.tokens[rows[0]] - 1).tolist() == [3, 4, 5]
    assert (batch.tokens[rows[1], :2] - 1).tolist() == [7, 8]
    assert batch.next_items[rows[0]] == 6
