"""Checkpoint mechanics: atomic writes that leave the old file on failure, random states that survive a
``weights_only`` round trip, and the messages of a checkpoint that does not fit the data."""

from __future__ import annotations

import errno
import os
import random

import numpy as np
import pytest
import torch

from mp4sr.errors import MP4SRError
from mp4sr.train import checkpoint as ck
from mp4sr.train.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    atomic_save,
    capture_rng,
    check_compatible,
    check_config,
    load_checkpoint,
    restore_rng,
)


def draws(generator: np.random.Generator) -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(), generator.permutation(10).tolist(),
            torch.rand(3).tolist(), torch.nn.functional.dropout(torch.ones(8), 0.5).tolist())


def test_every_random_state_survives_a_weights_only_round_trip(tmp_path):
    g = np.random.default_rng(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    draws(g)
    atomic_save({"state_dict": {}, "rng": capture_rng(g)}, tmp_path / "c.pt")
    expected = draws(g)
    draws(g)  # move every generator on
    g2 = np.random.default_rng(99)
    restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"], g2)
    assert draws(g2) == expected


def test_atomic_save_replaces_and_syncs_the_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    atomic_save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "a.pt")
    atomic_save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "a.pt")
    assert load_checkpoint(tmp_path / "a.pt")["state_dict"]["w"].tolist() == [0, 0]
    assert len(synced) == 4  # the file and its folder, twice
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     OSError(errno.EROFS, "Read-only file system"),
                                     RuntimeError("[enforce fail at inline_container.cc] unexpected pos"),
                                     KeyboardInterrupt()])
def test_a_failed_save_leaves_the_old_checkpoint_and_no_temporary_file(tmp_path, monkeypatch, failure):
    path = tmp_path / "last.pt"
    atomic_save({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise failure

    monkeypatch.setattr(torch, "save", broken_save)
    expected = KeyboardInterrupt if isinstance(failure, KeyboardInterrupt) else CheckpointError
    with pytest.raises(expected) as info:
        atomic_save({"state_dict": {"w": torch.zeros(3)}}, path)
    if expected is CheckpointError:
        assert isinstance(info.value, MP4SRError) and str(path) in str(info.value)
        assert "unchanged" in str(info.value)
    if getattr(failure, "errno", None) == errno.ENOSPC:
        assert "disk is full" in str(info.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_missing_folder_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="No such file or directory"):
        atomic_save({"state_dict": {}}, tmp_path / "gone" / "last.pt")


def test_damaged_or_foreign_files_are_refused(tmp_path):
    good = tmp_path / "good.pt"
    atomic_save({"state_dict": {"w": torch.ones(1000)}}, good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:500])
    (tmp_path / "text.pt").write_text("hello")
    torch.save({"weights": torch.ones(1)}, tmp_path / "foreign.pt")
    torch.save({"state_dict": {}, "obj": np.dtype("float32")}, tmp_path / "pickled.pt")  # weights_only refuses it
    for name, message in (("truncated", "cannot read"), ("text", "cannot read"), ("foreign", "not an mp4sr checkpoint"),
                          ("pickled", "cannot read"), ("missing", "not found")):
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / f"{name}.pt")


def test_item_index_messages():
    ckpt = {"item_ids": ["a", "b", "c"], "dataset": "amazon-scientific-mm", "model_name": "sasrec"}
    with pytest.raises(CheckpointMismatch, match=r"trained on 3 items \(amazon-scientific-mm\), the dataset has 4: "
                                                 r"use the same dataset, or retrain"):
        check_compatible(ckpt, "x.pt", item_ids=["a", "b", "c", "d"])
    with pytest.raises(CheckpointMismatch, match=r"item 1 is 'b' in the checkpoint .* but 'z' in the dataset"):
        check_compatible(ckpt, "x.pt", item_ids=["a", "z", "c"])
    with pytest.raises(CheckpointMismatch, match=r"holds a 'sasrec' model, not 'mp4sr'"):
        check_compatible(ckpt, "x.pt", model_name="mp4sr")
    check_compatible(ckpt, "x.pt", item_ids=["a", "b", "c"], features={}, model_name="sasrec")


def test_feature_messages():
    text = {"encoder": "all-MiniLM-L6-v2", "input_hash": "1" * 64, "item_ids_hash": "2" * 64, "shape": [3, 1, 8]}
    ckpt = {"features": {"text": text}}
    check_compatible(ckpt, "x.pt", features={"text": dict(text)})
    with pytest.raises(CheckpointMismatch, match=r"text features differ .* in their item index"):
        check_compatible(ckpt, "x.pt", features={"text": {**text, "item_ids_hash": "3" * 64}})
    with pytest.raises(CheckpointMismatch, match=r"encoder 'all-MiniLM-L6-v2', input_hash 111111111111; this run: "
                                                 r"encoder 'other', input_hash 444444444444"):
        check_compatible(ckpt, "x.pt", features={"text": {**text, "encoder": "other", "input_hash": "4" * 64}})
    with pytest.raises(CheckpointMismatch, match=r"uses image features .* trained without them"):
        check_compatible(ckpt, "x.pt", features={"text": text, "image": text})
    check_compatible({"features": None}, "x.pt", features={"text": text})  # a checkpoint that recorded none


def test_the_same_vectors_from_other_inputs_fit():
    text = {"encoder": "clip", "input_hash": "1" * 64, "content_hash": "5" * 64, "item_ids_hash": "2" * 64,
            "shape": [3, 1, 8]}
    ckpt = {"features": {"text": text}}
    check_compatible(ckpt, "x.pt", features={"text": {**text, "input_hash": "4" * 64}})  # e.g. the data was copied
    with pytest.raises(CheckpointMismatch, match=r"text features differ .* in their vectors .* content_hash 555555555555"):
        check_compatible(ckpt, "x.pt", features={"text": {**text, "content_hash": "6" * 64}})
    old = {"features": {"text": {k: v for k, v in text.items() if k != "content_hash"}}}  # saved before the hash
    with pytest.raises(CheckpointMismatch, match=r"in their inputs"):
        check_compatible(old, "x.pt", features={"text": {**text, "input_hash": "4" * 64}})


def test_feature_manifest_of_stores():
    class Store:
        manifest = {"encoder": "e", "mode": "text", "input_hash": "h", "item_ids_hash": "i", "shape": [2, 1, 4],
                    "dtype": "float16", "created": "today"}

    assert ck.feature_manifest({"text": Store(), "image": None}) == {
        "text": {"encoder": "e", "mode": "text", "input_hash": "h", "item_ids_hash": "i", "shape": [2, 1, 4],
                 "dtype": "float16", "content_hash": None}}
    assert ck.feature_manifest(None) is None


def test_config_changes_that_matter_are_named():
    saved = {"config": {"model": "sasrec", "params": {"hidden": 64}, "train": {"lr": 0.001, "epochs": 10, "threads": None}}}
    check_config(saved, {"model": "sasrec", "params": {"hidden": 64}, "train": {"lr": 0.001, "epochs": 50, "threads": 2}}, "x")
    with pytest.raises(CheckpointMismatch, match=r"params\.hidden: 64 in the checkpoint, 32 now"):
        check_config(saved, {"model": "sasrec", "params": {"hidden": 32}, "train": {"lr": 0.001, "epochs": 10}}, "x")


def test_a_setting_added_since_the_run_began_is_no_change_at_its_default():
    saved = {"config": {"model": "sasrec", "data": {"max_len": 50}}}
    check_config(saved, {"model": "sasrec", "data": {"max_len": 50, "columns": {"user": "user_id"}}}, "x")
    with pytest.raises(CheckpointMismatch, match=r"data\.columns\.user: None in the checkpoint, 'uid' now"):
        check_config(saved, {"model": "sasrec", "data": {"max_len": 50, "columns": {"user": "uid"}}}, "x")
