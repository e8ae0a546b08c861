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
