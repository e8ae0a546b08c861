"""The Python API: recommend / recommend_batch, loading errors, new items (encoding, save, reload)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
import torch

from mp4sr.errors import ConfigError, DataError, MP4SRError
from mp4sr.serve import Recommender, UnknownItemsError, UnsupportedError
from mp4sr.serve.new_items import ModalityEncoder, NewItem


def user_history(dataset, user: int) -> list[str]:
    return [str(dataset.items.ids[i]) for i in dataset.sequences[user]]


def test_recommend_batch_matches_recommend(recommenders, scientific_mm):
    rec = recommenders["sasrec"]
    histories = [user_history(scientific_mm, u) for u in range(5)] + [[]]
    batch = rec.recommend_batch(histories, k=7)
    for history, got in zip(histories, batch):
        single = rec.recommend(history, k=7)
        assert [i for i, _ in got] == [i for i, _ in single]
        assert [s for _, s in got] == pytest.approx([s for _, s in single], abs=1e-5)
        assert all(isinstance(i, str) and i in rec.index for i, _ in got)
        assert not set(history) & {i for i, _ in got}  # exclude_seen by default


def test_unknown_ids_raise_naming_them(recommenders, scientific_mm):
    rec = recommenders["sasrec"]
    with pytest.raises(UnknownItemsError, match="'nope'") as info:
        rec.recommend([*user_history(scientific_mm, 0), "nope"])
    assert info.value.ids == ["nope"] and isinstance(info.value, DataError)
    assert rec.recommend(["nope"], k=3, skip_unknown=True) == rec.recommend([], k=3)
    with pytest.raises(ConfigError, match="k must be"):
        rec.recommend([], k=0)
    with pytest.raises(DataError, match="not one string"):
        rec.recommend_batch(["B00004Z6I8"])


def test_load_errors(tmp_path, checkpoints, scientific_mm):
    with pytest.raises(ConfigError, match="not found"):
        Recommender.load(tmp_path / "nothing")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read the checkpoint"):
        Recommender.load(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "partial.pt")
    with pytest.raises(DataError, match="not an mp4sr checkpoint"):
        Recommender.load(tmp_path / "partial.pt")
    payload = torch.load(checkpoints["sasrec"] / "best.pt", weights_only=True)
    payload["item_ids"] = payload["item_ids"][::-1]
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(DataError, match="item index"):
        Recommender.load(tmp_path / "other.pt", dataset=scientific_mm)
    payload = torch.load(checkpoints["mp4sr"] / "best.pt", weights_only=True)
    assert payload["features"]["image"]["content_hash"]
    payload["features"]["image"]["content_hash"] = "0" * 64  # trained on other image vectors than the store's
    torch.save(payload, tmp_path / "other-vectors.pt")
    with pytest.raises(DataError, match=r"image vectors at .* are not those the model was trained with"):
        Recommender.load(tmp_path / "other-vectors.pt", dataset=scientific_mm)


def test_loads_from_its_stored_config(checkpoints):
    """Without a dataset argument the checkpoint's own config finds the data and the features."""
    rec = Recommender.load(checkpoints["mp4sr"] / "best.pt")
    assert rec.n_items == 1585 and rec.modalities == ["text", "image"] and rec.supports_new_items


def test_sasrec_refuses_new_items(recommenders):
    with pytest.raises(UnsupportedError, match="ID embeddings"):
        recommenders["sasrec"].add_items([{"id": "X", "text": "a thing"}])


def test_added_items_survive_save_and_reload(tmp_path, checkpoints, scientific_mm):
    """Transductive MP4SR: new items (no ID embedding) are scored from content, saved, and reloaded."""
    rec = Recommender.load(checkpoints["mp4sr_id"], dataset=scientific_mm)
    source = rec.index[str(scientific_mm.items.ids[42])]
    vectors = {f"{m}_vector": rec.model.tables[m].vectors[source, 0].tolist() for m in ("text", "image")}
    added = rec.add_items([{"id": "NEW-1", "text": "a copy", **vectors},
                           NewItem("NEW-2", text_vector=vectors["text_vector"])])  # no image: masked
    assert added == ["NEW-1", "NEW-2"] and rec.n_items == 1587
    assert rec.model.tables["image"].mask[-1].sum() == 0
    history = user_history(scientific_mm, 3)
    before = dict(rec.recommend(history, k=rec.n_items, exclude_seen=False))
    assert np.isfinite([before["NEW-1"], before["NEW-2"]]).all()
    with pytest.raises(DataError, match="already in the catalogue"):
        rec.add_items([{"id": "NEW-1", **vectors}])
    with pytest.raises(DataError, match="no content"):
        rec.add_items([{"id": "NEW-3"}])

    saved = rec.save(tmp_path / "extended")
    again = Recommender.load(saved, dataset=scientific_mm)
    assert again.n_items == 1587 and again.n_added == 2
    after = dict(again.recommend(history, k=again.n_items, exclude_seen=False))
    assert after["NEW-1"] == pytest.approx(before["NEW-1"], abs=1e-5)
    assert after["NEW-2"] == pytest.approx(before["NEW-2"], abs=1e-5)
    items = pd.read_csv(tmp_path / "extended" / "items.csv", keep_default_na=False)
    assert len(items) == 1587 and items["added"].sum() == 2 and items["item_id"].iloc[-1] == "NEW-2"


def test_an_added_item_scores_as_if_it_had_been_there_from_the_start(checkpoints, scientific_mm):
    """Inductive MP4SR (no ID embeddings): an item of the catalogue it was trained with, taken out of the
    tables and added back through the serving path (its vectors as a new item's), gets exactly the
    scores it had, after any history; so do the other items."""
    from mp4sr.models.items import ItemTable

    rec = Recommender.load(checkpoints["mp4sr"], dataset=scientific_mm)
    item = str(scientific_mm.items.ids[42])
    histories = [h for h in (user_history(scientific_mm, u) for u in range(20)) if item not in h][:5]
    before = [dict(rec.recommend(h, k=rec.n_items, exclude_seen=False)) for h in histories]
    row = rec.index[item]
    tables = rec.model.tables
    assert all(t.vectors.shape[1] == 1 and t.mask[row, 0] for t in tables.values())  # one vector each: all of it
    vectors = {f"{m}_vector": t.vectors[row, 0].tolist() for m, t in tables.items()}
    keep = torch.arange(rec.n_items) != row
    rec.model.set_item_tables({m: ItemTable(t.vectors[keep], t.mask[keep]) for m, t in tables.items()})
    rec = Recommender(rec.model, rec.item_ids[keep.numpy()], rec.popularity[keep], config=rec.config,
                      manifests=rec.manifests)
    assert item not in rec.index and rec.add_items([{"id": item, **vectors}]) == [item]
    for history, known in zip(histories, before):
        after = dict(rec.recommend(history, k=rec.n_items, exclude_seen=False))
        assert after[item] == pytest.approx(known[item], abs=1e-6)
        assert after.keys() == known.keys()
        assert np.allclose([after[i] for i in known], list(known.values()), atol=1e-6)


# ---------------------------------------------------------------------------- encoding new items


class FakeText:
    name, fingerprint = "fake", "fake-v1"

    def encode(self, texts, batch_size=64):
        return np.stack([np.full(4, float(len(t))) for t in texts]).astype(np.float32)


class FakeImage:
    name, fingerprint, image_size = "fake-img", "fake-img-v1", 8

    def embed(self, images):
        return np.stack([np.asarray(im, dtype=np.float32).mean((0, 1)).repeat(2)[:4] for im in images])

    def keywords(self, images, n):
        return [["red", "box"][:n] for _ in images]


def _png(colour=(255, 0, 0)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_text_is_split_like_the_store_and_capped():
    encoder = ModalityEncoder("text", {"mode": "sentences", "split": "sentences", "encoder_fingerprint": "fake-v1"}, k=2, dim=4)
    encoder.text_encoder = FakeText()
    items = [NewItem("a", text="One. Two words."), NewItem("b", text="A. B. C."), NewItem("c", text_vector=[1, 2, 3, 4]),
             NewItem("d")]
    table = encoder.encode(items)
    assert table.mask.tolist() == [[True, True], [True, True], [True, False], [False, False]]
    assert table.vectors[0, :, 0].tolist() == [4.0, 10.0]  # "One.", "Two words."
    assert table.vectors[1, :, 0].tolist() == [2.0, 5.0]  # "A.", "B. C." (the tail joined, not dropped)
    assert table.vectors[2, 0].tolist() == [1, 2, 3, 4]


def test_images_are_embedded_or_turned_into_keywords(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "blue.jpg")
    embed = ModalityEncoder("image", {"mode": "embed", "encoder_fingerprint": "fake-img-v1"}, k=1, dim=4)
    embed.image_encoder = FakeImage()
    table = embed.encode([NewItem("red", image_base64=base64.b64encode(_png()).decode()),
                          NewItem("blue", image_path=str(tmp_path / "blue.jpg")), NewItem("none", text="x")])
    assert table.mask[:, 0].tolist() == [True, True, False]
    assert table.vectors[0, 0, 0] > 200 and table.vectors[1, 0, 0] < 50
    keywords = ModalityEncoder("image", {"mode": "keywords", "n_keywords": 2}, k=1, dim=4)
    keywords.image_encoder, keywords.text_encoder = FakeImage(), FakeText()
    assert keywords.encode([NewItem("k", image=_png())]).vectors[0, 0, 0] == len("red, box")
    with pytest.raises(DataError, match="'bad': cannot read its image"):
        embed.encode([NewItem("bad", image_base64="not base64!")])


def test_another_encoder_than_the_stores_is_refused(monkeypatch):
    other = FakeText()
    other.fingerprint = "something-else"
    monkeypatch.setattr("mp4sr.features.text.load_text_encoder", lambda spec=None: other)
    encoder = ModalityEncoder("text", {"mode": "sentences", "encoder_fingerprint": "fake-v1"}, k=1, dim=4)
    with pytest.raises(MP4SRError, match="another vector space"):
        encoder.encode([NewItem("a", text="Hello.")])


def test_new_item_fields_are_checked():
    with pytest.raises(DataError, match="unknown field"):
        NewItem.parse({"id": "a", "colour": "red"})
    with pytest.raises(DataError, match="no 'id'"):
        NewItem.parse({"text": "hello"})
    encoder = ModalityEncoder("image", {"mode": "imported", "encoder": "x.feat3CLS"}, k=1, dim=3)
    with pytest.raises(DataError, match="NaN"):
        encoder.encode([NewItem("a", image_vector=[0.0, float("nan"), 1.0])])
    with pytest.raises(DataError, match="image_vector"):
        encoder.encode([NewItem("a", image=_png())])
