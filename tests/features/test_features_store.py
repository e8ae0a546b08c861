"""The on-disk FeatureStore: layout, memory-mapping, presence, item-index checks, atomic writes."""

import json

import numpy as np
import pytest

from mp4sr.errors import DataError
from mp4sr.features import FeatureStore, store_dir
from mp4sr.features.store import reusable, write_store

IDS = ["a", "b", "c", "d"]


def _store(path, table=None, slots=None, dtype="float16"):
    table = np.arange(12, dtype=np.float32).reshape(3, 4) if table is None else table
    slots = np.array([[0, 1], [-1, -1], [2, -1], [1, 0]]) if slots is None else slots
    manifest = {"modality": "text", "encoder": "test", "mode": "sentences", "input_hash": "h1"}
    return write_store(path, table, slots, IDS, manifest, dtype)


def test_store_layout_and_attributes(cache):
    path = store_dir("toy", "text", "test")
    assert path.is_relative_to(cache / "features")
    store = _store(path)
    assert isinstance(store.vectors, np.memmap) and store.vectors.dtype == np.float16
    assert store.vectors.shape == (4, 2, 4) and store.dim == 4 and store.max_vectors == 2
    assert store.mask.tolist() == [[True, True], [False, False], [True, False], [True, True]]
    assert store.item_present.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(store.vectors[3, 0], np.arange(4, 8))
    assert not store.vectors[1].any()
    assert store.item_ids == IDS
    m = json.loads((path / "manifest.json").read_text())
    assert m["shape"] == [4, 2, 4] and m["dtype"] == "float16" and m["n_items"] == 4 and m["input_hash"] == "h1"
    assert m["items_present"] == 3 and m["item_ids_hash"]
    loaded = FeatureStore.load(path)
    np.testing.assert_array_equal(loaded.vectors, store.vectors)
    batch_vectors, batch_mask = loaded.take(np.array([[3, 0], [1, 1]]))  # e.g. a batch of item sequences
    assert batch_vectors.shape == (2, 2, 2, 4) and batch_vectors.dtype == np.float32 and batch_mask.shape == (2, 2, 2)
    np.testing.assert_array_equal(batch_vectors[0, 0], store.vectors[3])
    assert batch_mask[1].tolist() == [[False, False], [False, False]]
    pooled = loaded.pooled(normalize=False)
    np.testing.assert_allclose(pooled[0], [2, 3, 4, 5])  # mean of rows 0 and 1
    assert not pooled[1].any()


def test_content_hash_follows_the_vectors_not_their_making(cache):
    first = _store(store_dir("toy", "text", "one"))
    table = np.arange(12, dtype=np.float32).reshape(3, 4)[[2, 0, 1]]  # the same vectors, from another table order
    again = write_store(store_dir("toy", "text", "two"), table, np.array([[1, 2], [-1, -1], [0, -1], [2, 1]]), IDS,
                        {"modality": "text", "encoder": "test", "mode": "sentences", "input_hash": "other"})
    assert first.content_hash == again.content_hash == first.manifest["content_hash"]
    table[0, 0] += 1  # one value differs
    changed = write_store(store_dir("toy", "text", "three"), table, np.array([[1, 2], [-1, -1], [0, -1], [2, 1]]),
                          IDS, {"modality": "text", "encoder": "test", "mode": "sentences", "input_hash": "other"})
    assert changed.content_hash != first.content_hash
    manifest_path = first.path / "manifest.json"  # a store written before manifests recorded it
    manifest = json.loads(manifest_path.read_text())
    del manifest["content_hash"]
    manifest_path.write_text(json.dumps(manifest))
    assert FeatureStore.load(first.path).content_hash == again.content_hash


def test_rewrite_is_atomic_and_leaves_no_temporaries(cache):
    path = store_dir("toy", "text", "test")
    _store(path)
    _store(path, dtype="float32")  # replaces the older store in place
    assert FeatureStore.load(path).vectors.dtype == np.float32
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_reuse_only_with_the_same_input_hash(cache):
    path = store_dir("toy", "text", "test")
    _store(path)
    assert reusable(path, "h1") is not None
    assert reusable(path, "other") is None
    assert reusable(store_dir("toy", "text", "absent"), "h1") is None


def test_check_matches_refuses_another_item_index(cache):
    store = _store(store_dir("toy", "text", "test"))
    store.check_matches(IDS)
    with pytest.raises(DataError, match=r"item 2 is 'c' in the store but 'x' here.*mp4sr features"):
        store.check_matches(["a", "b", "x", "d"])
    with pytest.raises(DataError, match="the store has 4 items, the dataset 5"):
        store.check_matches([*IDS, "e"])


def test_nan_and_float16_overflow_are_refused_naming_the_item(cache):
    table = np.ones((3, 4), np.float32)
    table[2, 1] = np.nan
    with pytest.raises(DataError, match=r"item 'c' \(index 2\) has a vector with NaN"):
        _store(store_dir("toy", "text", "nan"), table=table)
    table[2, 1] = 1e6
    with pytest.raises(DataError, match=r"item 'c'.*float16.*float32"):
        _store(store_dir("toy", "text", "big"), table=table)
    assert _store(store_dir("toy", "text", "big"), table=table, dtype="float32").vectors[2, 0, 1] == 1e6
    unused = np.ones((4, 4), np.float32)
    unused[3] = np.nan  # a row no item points to is harmless
    _store(store_dir("toy", "text", "unused"), table=unused)


def test_unreadable_store_is_a_data_error(cache):
    path = store_dir("toy", "text", "test")
    _store(path)
    (path / "mask.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="rebuild"):
        FeatureStore.load(path)


def test_joined_store_puts_the_parts_one_after_the_other(cache):
    from mp4sr.features.store import join_stores

    first = _store(store_dir("a", "text", "test"))  # 4 items, 2 slots
    second = write_store(store_dir("b", "text", "test"), np.full((1, 4), 7, np.float32), np.array([[0], [-1]]),
                         ["x", "y"], {"modality": "text", "encoder": "test", "mode": "sentences", "input_hash": "h2"})
    ids = [f"a/{i}" for i in IDS] + ["b/x", "b/y", "c/z"]
    joined = join_stores("a+b+c", "text", [first, second, None], [4, 2, 1], ids)
    assert joined.vectors.shape == (7, 2, 4) and joined.item_ids == ids
    np.testing.assert_array_equal(joined.vectors[:4], first.vectors)
    np.testing.assert_array_equal(joined.mask[:4], first.mask)
    assert joined.mask[4:].tolist() == [[True, False], [False, False], [False, False]]
    np.testing.assert_array_equal(joined.vectors[4, 0], [7, 7, 7, 7])
    again = join_stores("a+b+c", "text", [first, second, None], [4, 2, 1], ids)
    assert again.path == joined.path and not again.computed  # reused while the parts are unchanged
    assert join_stores("c", "text", [None], [1], ["c/z"]) is None
    wide = write_store(store_dir("w", "text", "test"), np.ones((1, 5), np.float32), np.array([[0]]), ["w"],
                       {"modality": "text", "encoder": "other", "mode": "sentences", "input_hash": "h3"})
    with pytest.raises(DataError, match="different sizes"):
        join_stores("a+w", "text", [first, wide], [4, 1], ids[:4] + ["w/w"])
