"""Text features: sentence splitting, dedupe, reuse, resume after an interruption, parallel runs, shards + merge."""

import threading
import time

import numpy as np
import pytest

from mp4sr.data import ItemCatalogue
from mp4sr.errors import ConfigError, DataError
from mp4sr.features import RunOptions, Shard, extract_text, item_sentences, load_text_encoder, merge_shards
from mp4sr.features.chunks import partial_dir
from mp4sr.features.text import cap, split_text
from mp4sr.paths import CACHE_ENV

UNISREC = "GE Silicone 2+ Window & Door Caulk, 10.1 Oz. Tube, Clear. Industrial & Scientific Tapes Caulk. GE Momentive. "


class Interrupted(Exception):
    pass


def _catalogue(n=40):
    """Items whose texts share sentences (brands and categories repeat across items, as in Amazon data)."""
    texts = [f"Product number {i}. Category {i % 4}. Brand {i % 3}." for i in range(n)]
    texts[5] = ""  # an item without text
    return ItemCatalogue(np.array([f"i{i}" for i in range(n)], dtype=object), text=texts)


def test_unisrec_split_keeps_dots_inside_the_title():
    assert split_text(UNISREC, "unisrec") == [
        "GE Silicone 2+ Window & Door Caulk, 10.1 Oz. Tube, Clear", "Industrial & Scientific Tapes Caulk", "GE Momentive"]
    assert split_text("Soft top. Made of cotton! Wash at 30 C. 2 pieces", "sentences") == [
        "Soft top.", "Made of cotton!", "Wash at 30 C.", "2 pieces"]
    assert split_text("  ", "sentences") == [] and split_text("a. b", "none") == ["a. b"]
    assert cap(["a", "b", "c", "d"], 2) == ["a", "b c d"]  # the tail is kept in the last vector
    with pytest.raises(ConfigError, match="text split"):
        split_text("x", "words")


def test_fields_give_one_vector_each(scientific):
    cat = ItemCatalogue(np.array(["a", "b"], dtype=object),
                        fields={"title": ["Red dress", ""], "desc": ["Long. Cotton.", "Blue cap"]})
    assert item_sentences(cat) == [["Red dress", "Long. Cotton."], ["Blue cap"]]
    sentences = item_sentences(scientific.items, "unisrec")
    assert max(map(len, sentences)) == 3 and sum(map(len, sentences)) > 13000


def test_dedupe_then_reuse_without_work(make_fake_encoder):
    cat = _catalogue()
    encoder = make_fake_encoder()
    store = extract_text(cat, "toy", encoder, options=RunOptions(progress=False))
    assert store.computed and store.vectors.shape == (40, 3, 8)
    assert store.item_present.sum() == 39 and not store.mask[5].any()
    distinct = {s for t in cat.text for s in split_text(t, "sentences")}
    assert encoder.n_encoded == len(distinct) == 39 + 4 + 3  # each distinct sentence once
    # Identical sentences get identical vectors, wherever they occur.
    np.testing.assert_array_equal(store.vectors[1, 1], store.vectors[5 + 4, 1])
    idle = make_fake_encoder(fail_on="Brand 0.")
    idle.encode = None  # a second run with the same inputs must not encode anything
    again = extract_text(cat, "toy", idle, options=RunOptions(progress=False))
    assert not again.computed and again.path == store.path


def test_resume_after_an_interruption(make_fake_encoder):
    cat = _catalogue()
    reference = extract_text(cat, "reference", make_fake_encoder(), options=RunOptions(chunk_size=10, progress=False))

    def stop_after_two(chunk):
        if chunk == 1:
            raise Interrupted

    first = make_fake_encoder()
    with pytest.raises(Interrupted):
        extract_text(cat, "toy", first, options=RunOptions(chunk_size=10, progress=False, on_chunk=stop_after_two))
    assert first.n_encoded == 20
    assert len(list(partial_dir(reference.path.parent.parent / "toy" / reference.path.name).glob("chunk-*"))) == 2
    second = make_fake_encoder()
    store = extract_text(cat, "toy", second, options=RunOptions(chunk_size=10, progress=False))
    assert second.n_encoded == 46 - 20  # only the missing chunks
    np.testing.assert_array_equal(store.vectors, reference.vectors)
    np.testing.assert_array_equal(store.mask, reference.mask)
    assert not partial_dir(store.path).exists()


def test_parallel_runs_build_a_store_once(make_fake_encoder):
    """Two runs that need the same store at once (experiment jobs): one encodes, the other waits and
    reuses its store, and neither trips over the other's chunks."""
    cat, started = _catalogue(), threading.Barrier(2)
    encoders = [make_fake_encoder(), make_fake_encoder()]
    for encoder in encoders:
        fast = encoder.encode
        encoder.encode = lambda texts, batch_size=64, fast=fast: (time.sleep(0.02), fast(texts, batch_size))[1]
    stores, errors = [None, None], []

    def build(i):
        started.wait()
        try:
            stores[i] = extract_text(cat, "toy", encoders[i], options=RunOptions(chunk_size=4, progress=False))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(e.n_encoded for e in encoders) == [0, 46]  # every distinct sentence encoded once in all
    assert sorted(s.computed for s in stores) == [False, True]
    np.testing.assert_array_equal(stores[0].vectors, stores[1].vectors)
    assert not partial_dir(stores[0].path).exists()


def test_shards_then_merge_equal_one_pass(minilm, hm):
    """With the real model: chunks are the same computations whatever the sharding, so bit-identical."""
    cat = ItemCatalogue(hm.catalogue.ids[:10], fields={"name": hm.catalogue.fields["prod_name"][:10],
                                                       "categories": hm.catalogue.fields["categories"][:10]})
    one_pass = extract_text(cat, "one-pass", minilm, options=RunOptions(chunk_size=4, progress=False))
    for i in (0, 1, 2):
        done = extract_text(cat, "sharded", minilm, options=RunOptions(chunk_size=4, shard=Shard(i, 3), progress=False))
        assert (done is None) == (i < 2)  # the last shard to finish also writes the store
    merged = merge_shards(cat, "sharded", "text", encoder=minilm, options=RunOptions(chunk_size=4, progress=False))
    np.testing.assert_array_equal(np.asarray(merged.vectors), np.asarray(one_pass.vectors))
    np.testing.assert_array_equal(merged.mask, one_pass.mask)
    assert merged.manifest["input_hash"] == one_pass.manifest["input_hash"]


def test_merge_with_missing_shards_names_them(make_fake_encoder, tmp_path, cache, monkeypatch):
    cat = _catalogue()
    opts = dict(chunk_size=10, progress=False)
    assert extract_text(cat, "toy", make_fake_encoder(), options=RunOptions(shard=Shard(0, 2), **opts)) is None
    with pytest.raises(DataError, match=r"2 of 5 chunks are not computed yet \(chunks 1, 3\).*--shard"):
        merge_shards(cat, "toy", "text", encoder=make_fake_encoder(), options=RunOptions(**opts))
    # Shard 1 runs on another machine (another cache); its '.partial' folder is named at merge time.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "other-cache"))
    assert extract_text(cat, "toy", make_fake_encoder(), options=RunOptions(shard=Shard(1, 2), **opts)) is None
    other = next((tmp_path / "other-cache" / "features" / "toy").glob("*.partial"))
    monkeypatch.setenv(CACHE_ENV, str(cache))
    merged = merge_shards(cat, "toy", "text", parts=[other.parent], encoder=make_fake_encoder(), options=RunOptions(**opts))
    reference = extract_text(cat, "reference", make_fake_encoder(), options=RunOptions(progress=False))
    np.testing.assert_array_equal(merged.vectors, reference.vectors)
    with pytest.raises(DataError, match="other inputs or settings"):
        merge_shards(_catalogue(12), "toy", "text", parts=[other], encoder=make_fake_encoder(), options=RunOptions(**opts))


def test_shard_spec_is_checked():
    assert Shard.parse("1/4") == Shard(1, 4) and Shard.parse(None) is None
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ConfigError, match="shard"):
            Shard.parse(bad)


def test_nan_from_the_encoder_names_the_item(make_fake_encoder):
    with pytest.raises(DataError, match=r"item 'i2' \(index 2\) has a vector with NaN .*fake on 'Category 2.'"):
        extract_text(_catalogue(), "toy", make_fake_encoder(fail_on="Category 2."), options=RunOptions(progress=False))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_plain_hf_encoder_with_pooling(tiny_bert, pooling):
    encoder = load_text_encoder(str(tiny_bert), pooling)
    cat = ItemCatalogue(np.array(["a", "b", "c"], dtype=object), text=["red dress.", "blue cap. wool", "red dress."])
    store = extract_text(cat, "toy", encoder, split="none", options=RunOptions(progress=False))
    assert store.vectors.shape == (3, 1, 16) and store.manifest["encoder"] == f"{tiny_bert.name}-{pooling}"
    np.testing.assert_array_equal(store.vectors[0], store.vectors[2])
    single = encoder.encode(["blue cap. wool"])  # batching and padding do not change a vector
    np.testing.assert_allclose(store.vectors[1, 0], single[0], atol=2e-3)
    assert load_text_encoder(str(tiny_bert)).name == f"{tiny_bert.name}-mean"  # a plain folder: mean pooling


def test_unknown_encoder_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        load_text_encoder(str(tmp_path / "missing"))
