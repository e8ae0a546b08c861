"""Image features: unreadable and missing images are masked and reported; CLIP from a folder in both modes."""

import json
import logging

import numpy as np
import pytest

from mp4sr.data import ItemCatalogue
from mp4sr.errors import ConfigError
from mp4sr.features import RunOptions, Shard, extract_images, load_image_encoder, merge_shards

QUIET = RunOptions(chunk_size=256, progress=False)


@pytest.fixture
def catalogue(tmp_path, write_jpeg):
    """4 items: two good photos, a corrupt JPEG, and one item without an image."""
    red = write_jpeg(tmp_path / "red.jpg", (220, 20, 20))
    blue = write_jpeg(tmp_path / "blue.jpg", (20, 20, 220))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" + bytes(range(256)))
    paths = [str(red), str(corrupt), None, str(blue)]
    return ItemCatalogue(np.array(["red", "broken", "none", "blue"], dtype=object), image_paths=paths)


def test_corrupt_image_is_masked_and_reported(catalogue, caplog):
    with caplog.at_level(logging.WARNING):
        store = extract_images(catalogue, "toy", options=QUIET)
    assert store.vectors.shape == (4, 1, 1280)
    assert store.item_present.tolist() == [True, False, False, True]
    assert not store.vectors[1].any() and not store.vectors[2].any()
    report = [r.getMessage() for r in caplog.records if "corrupt.jpg" in r.getMessage()]
    assert len(report) == 1 and "item 'broken'" in report[0] and "masked" in report[0]
    assert store.manifest["n_problems"] == 1 and "corrupt.jpg" in store.manifest["problems"][0]


def test_missing_file_is_masked_and_reported(catalogue, tmp_path):
    catalogue.image_paths[2] = str(tmp_path / "gone.jpg")
    store = extract_images(catalogue, "toy", options=QUIET)
    assert store.item_present.tolist() == [True, False, False, True]
    assert any("item 'none'" in p and "file not found" in p for p in store.manifest["problems"])


def test_image_shards_merge_like_one_pass(catalogue):
    one = extract_images(catalogue, "one", options=RunOptions(chunk_size=1, progress=False))
    options = RunOptions(chunk_size=1, progress=False)
    assert extract_images(catalogue, "sharded", options=RunOptions(chunk_size=1, shard=Shard(0, 2), progress=False)) is None
    assert extract_images(catalogue, "sharded", options=RunOptions(chunk_size=1, shard=Shard(1, 2), progress=False)) is not None
    merged = merge_shards(catalogue, "sharded", "image", options=options)  # already merged: reused
    np.testing.assert_array_equal(np.asarray(merged.vectors), np.asarray(one.vectors))
    assert merged.manifest["n_problems"] == 1  # the report survives chunking


def test_tiny_clip_embed(catalogue, tiny_clip):
    store = extract_images(catalogue, "toy", str(tiny_clip), mode="embed", options=QUIET)
    assert store.vectors.shape == (4, 1, 16) and store.item_present.tolist() == [True, False, False, True]
    assert store.manifest["encoder"] == tiny_clip.name and store.manifest["mode"] == "embed"
    assert not np.allclose(store.vectors[0], store.vectors[3])


def test_tiny_clip_keywords(catalogue, tiny_clip, make_fake_encoder, tmp_path):
    words = ["dress", "shoe", "red", "blue", "cap", "scarf"]
    (tmp_path / "words.txt").write_text("\n".join(words) + "\ndress\n\n")
    text = make_fake_encoder(dim=12)
    store = extract_images(catalogue, "toy", str(tiny_clip), mode="keywords", text_encoder=text, n_keywords=3,
                           vocabulary=tmp_path / "words.txt", options=QUIET)
    assert store.vectors.shape == (4, 1, 12)  # keyword sentences live in the text encoder's space
    assert store.item_present.tolist() == [True, False, False, True]
    keywords = json.loads((store.path / "keywords.json").read_text())
    red = keywords[catalogue.image_paths[0]].split(", ")
    assert len(red) == 3 and set(red) <= set(words)
    np.testing.assert_allclose(store.vectors[0, 0], text.encode([", ".join(red)])[0], rtol=1e-3, atol=1e-3)
    assert store.manifest["text_encoder"] == "fake" and store.manifest["n_keywords"] == 3


def test_imagenet_keywords_cannot_take_another_dictionary():
    with pytest.raises(ConfigError, match="CLIP"):
        load_image_encoder(None, vocabulary=["dress"])
    with pytest.raises(ConfigError, match="image encoder"):
        load_image_encoder("resnet-50")
