"""Sequences saved to disk and memory-mapped back."""

import numpy as np
import pytest
import torch

from mp4sr.data import Dataset, ItemCatalogue, Sequences, leave_one_out
from mp4sr.errors import DataError


def test_memory_mapped_sequences_equal_and_train(tmp_path):
    seqs = Sequences.from_lists([[0, 1, 2, 3], [4, 0, 1], [2, 3, 4, 1, 0]])
    folder = seqs.save(tmp_path / "seqs")
    back = Sequences.load(folder, mmap=True)
    assert isinstance(back.items, np.memmap) and isinstance(back.offsets, np.memmap)
    assert np.array_equal(back.items, seqs.items) and np.array_equal(back.offsets, seqs.offsets)
    ds = Dataset("mm", ItemCatalogue(np.arange(5).astype(str)), np.arange(3).astype(str), back)
    split = leave_one_out(ds)
    assert split.test.targets.tolist() == [3, 1, 0]
    assert torch.from_numpy(np.asarray(ds.sequences.items)).sum() == 21


def test_broken_sequence_files_are_refused(tmp_path):
    Sequences.from_lists([[0, 1], [1, 2]]).save(tmp_path)
    np.save(tmp_path / "items.npy", np.arange(3))  # offsets say 4 interactions
    with pytest.raises(DataError, match="do not form CSR"):
        Sequences.load(tmp_path)
    with pytest.raises(DataError, match="cannot read"):
        Sequences.load(tmp_path / "missing")


def test_real_dataset_trains_from_memory_mapped_sequences(tmp_path, scientific_mm):
    import dataclasses

    from mp4sr.config import RunConfig, build_config
    from mp4sr.train import train_run

    ds = scientific_mm
    mapped = dataclasses.replace(ds, sequences=Sequences.load(ds.sequences.save(tmp_path / "seqs")))
    assert isinstance(mapped.sequences.items, np.memmap)
    a, b = leave_one_out(ds), leave_one_out(mapped)
    assert np.array_equal(a.test.targets, b.test.targets) and np.array_equal(a.train_counts(), b.train_counts())
    cfg = build_config(RunConfig, overrides=["model=sasrec", "train.epochs=1", "train.progress=false",
                                             "params.hidden=16", "params.ffn=32"])
    one, two = train_run(cfg, dataset=ds), train_run(cfg, dataset=mapped)
    assert one.result.test == two.result.test


def test_without_users_keeps_the_catalogue_and_the_other_sequences():
    items = ItemCatalogue(np.array(["a", "b", "c", "d"]))
    data = Dataset("toy", items, np.array(["u1", "u2", "u3"]), Sequences.from_lists([[0, 1], [2, 3, 1], [3]]))
    kept = data.without_users(["u2", "nobody"])
    assert list(kept.user_ids) == ["u1", "u3"] and kept.items is items
    assert [list(kept.sequences[u]) for u in range(kept.n_users)] == [[0, 1], [3]]
    assert data.without_users([]) is data


def test_a_source_without_the_targets_users(scientific, scientific_mm):
    from mp4sr.data import exclude_users_of

    source = exclude_users_of(scientific, [scientific_mm.source])
    assert source.n_users == scientific.n_users - scientific_mm.n_users == 5514
    assert not set(source.user_ids) & set(scientific_mm.user_ids)
    assert source.n_items == scientific.n_items
    kept = {str(u): source.sequences[i].tolist() for i, u in enumerate(source.user_ids)}
    for i, u in enumerate(scientific.user_ids[:200]):
        if str(u) in kept:
            assert kept[str(u)] == scientific.sequences[i].tolist()
    with pytest.raises(DataError, match="every user"):
        exclude_users_of(scientific_mm, [scientific.source])


def test_joined_datasets_keep_ids_apart():
    from mp4sr.data import join_datasets

    a = Dataset("a", ItemCatalogue(np.array(["i", "j"]), text=["I", "J"]), np.array(["u"]), Sequences.from_lists([[0, 1, 0]]))
    b = Dataset("b", ItemCatalogue(np.array(["i", "k", "l"]), image_paths=["p", None, "q"]), np.array(["u", "v"]),
                Sequences.from_lists([[2, 1], [0]]))
    joined = join_datasets([a, b])
    assert joined.name == "a+b" and list(joined.items.ids) == ["a/i", "a/j", "b/i", "b/k", "b/l"]
    assert list(joined.user_ids) == ["a/u", "b/u", "b/v"]
    assert [joined.sequences[u].tolist() for u in range(3)] == [[0, 1, 0], [4, 3], [2]]
    assert joined.items.text == ["I", "J", "", "", ""]
    assert joined.items.image_paths == [None, None, "p", None, "q"]
    with pytest.raises(DataError, match="same name"):
        join_datasets([a, a])
