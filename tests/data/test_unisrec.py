"""The UniSRec layout is rebuilt into full sequences whose leave-one-out split equals the files."""

import numpy as np
import pytest

from mp4sr.data import leave_one_out
from mp4sr.data.readers import read_unisrec_split

MAX_LEN = 50


def _file_rows(folder, split, dataset):
    return read_unisrec_split(folder / f"Scientific.{split}.inter", dataset.n_users, dataset.n_items)


def _eval_rows(dataset, evalset):
    items = dataset.sequences.items
    return [
        (int(u), items[max(s, e - MAX_LEN) : e].tolist(), int(t))
        for u, s, e, t in zip(evalset.users, evalset.hist_start, evalset.hist_end, evalset.targets)
    ]


def _train_rows(dataset, split):
    ex = split.train_examples("prefix", MAX_LEN)
    offsets = dataset.sequences.offsets
    user = np.searchsorted(offsets, ex.end, side="right") - 1
    order = np.lexsort((-ex.end, user))  # the files list each user's rows newest first
    items = dataset.sequences.items
    return [(int(user[i]), items[ex.start[i] : ex.end[i]].tolist(), int(items[ex.end[i]])) for i in order]


@pytest.mark.parametrize("name", ["amazon-scientific-mm", "amazon-scientific"])
def test_rebuilt_split_equals_files_row_for_row(shared_data, name, request):
    dataset = request.getfixturevalue("scientific_mm" if name.endswith("-mm") else "scientific")
    folder = shared_data / name
    split = leave_one_out(dataset)
    assert _train_rows(dataset, split) == _file_rows(folder, "train", dataset)
    assert _eval_rows(dataset, split.valid) == _file_rows(folder, "valid", dataset)
    assert _eval_rows(dataset, split.test) == _file_rows(folder, "test", dataset)


def test_sizes_match_published_counts(scientific, scientific_mm):
    assert (scientific.n_users, scientific.n_items, scientific.n_interactions) == (8442, 4385, 59427)
    assert (scientific_mm.n_users, scientific_mm.n_items, scientific_mm.n_interactions) == (2928, 1585, 19712)
    # three users of amazon-scientific have histories longer than the 50 items kept per row
    assert (scientific.sequences.lengths > MAX_LEN + 1).sum() == 3


def test_catalogue_has_text_and_vectors(scientific_mm):
    assert scientific_mm.items.ids[0] == "B00O47ILVA"
    assert all(scientific_mm.items.text)
    assert set(scientific_mm.extras) == {"text_vectors", "image_vectors"}
