"""Import of precomputed vectors (UniSRec / MISSRec matrices, tables keyed by item id, per-item files), and the
ASIN join of amazon-scientific's images."""

from pathlib import Path

import numpy as np
import pytest

from mp4sr.errors import ConfigError, DataError
from mp4sr.features import FeatureSettings, feature_stores, import_vectors, read_item_ids, read_vectors


def test_import_amazon_scientific_mm_feat_files(scientific_mm):
    stores = feature_stores(scientific_mm)
    raw_image = np.fromfile(scientific_mm.extras["image_vectors"], dtype="<f4").reshape(1585, 512)
    for modality in ("text", "image"):
        store = stores[modality]
        assert store.vectors.shape == (1585, 1, 512) and store.mask.all() and store.item_present.all()
        assert store.manifest["mode"] == "imported"
        store.check_matches(scientific_mm.items.ids)
    np.testing.assert_allclose(stores["image"].vectors[:, 0], raw_image, rtol=1e-3, atol=1e-3)  # float16


def test_amazon_scientific_gets_mm_image_vectors_by_asin(scientific, scientific_mm, shared_data):
    store = feature_stores(scientific, text=None)["image"]
    assert store.vectors.shape == (4385, 1, 512)
    assert int(store.item_present.sum()) == 1585
    store.check_matches(scientific.items.ids)
    raw = read_vectors(scientific_mm.extras["image_vectors"], n_rows=1585)
    index = scientific.items.index_of()
    for row in (0, 700, 1584):  # same ASIN -> same vector
        asin = scientific_mm.items.ids[row]
        np.testing.assert_allclose(store.vectors[index[asin], 0], raw[row], rtol=1e-3, atol=1e-3)
    explicit = import_vectors(scientific_mm.extras["image_vectors"], scientific.items.ids,
                              source_item_ids=shared_data / "amazon-scientific-mm" / "Scientific.item2index",
                              dataset="amazon-scientific", name="explicit")
    np.testing.assert_array_equal(explicit.mask, store.mask)


def test_import_rejects_nan_naming_the_item(tmp_path):
    ids = [f"item{i}" for i in range(5)]
    vectors = np.ones((5, 3), "<f4")
    vectors[3, 2] = np.nan
    path = tmp_path / "X.feat3CLS"
    vectors.tofile(path)
    with pytest.raises(DataError, match=r"item 'item3' \(index 3\) has a vector with NaN.*X.feat3CLS"):
        import_vectors(path, ids)


def test_raw_and_npy_shapes(tmp_path):
    ids = ["a", "b", "c"]
    np.arange(12, dtype="<f4").tofile(tmp_path / "v.feat1CLS")
    assert read_vectors(tmp_path / "v.feat1CLS", n_rows=3).shape == (3, 4)  # dim inferred
    assert read_vectors(tmp_path / "v.feat1CLS", dim=6).shape == (2, 6)
    with pytest.raises(DataError, match="do not split into 5 rows"):
        read_vectors(tmp_path / "v.feat1CLS", n_rows=5)
    with pytest.raises(ConfigError, match="give dim="):
        read_vectors(tmp_path / "v.feat1CLS")
    (tmp_path / "odd.feat1CLS").write_bytes(b"\0" * 10)
    with pytest.raises(DataError, match="whole number of float32"):
        read_vectors(tmp_path / "odd.feat1CLS", n_rows=1)
    np.save(tmp_path / "v.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    (tmp_path / "ids.txt").write_text("c\na\n")
    store = import_vectors(tmp_path / "v.npy", ids, source_item_ids=tmp_path / "ids.txt", modality="text")
    assert store.mask[:, 0].tolist() == [True, False, True]
    np.testing.assert_array_equal(store.vectors[0, 0], [3, 4, 5])  # 'a' is row 1 of the file
    assert read_item_ids(["x", 1]) == ["x", "1"]


def test_import_with_no_common_ids_says_so(tmp_path):
    np.zeros((2, 4), "<f4").tofile(tmp_path / "v.feat3CLS")
    with pytest.raises(DataError, match="none of the 3 items"):
        import_vectors(tmp_path / "v.feat3CLS", ["a", "b", "c"], source_item_ids=["x", "y"])


def test_second_import_reuses_the_store(scientific_mm):
    first = import_vectors(scientific_mm.extras["text_vectors"], scientific_mm.items.ids, modality="text", dataset="mm")
    again = import_vectors(scientific_mm.extras["text_vectors"], scientific_mm.items.ids, modality="text", dataset="mm")
    assert first.computed and not again.computed and again.path == first.path


def test_a_copied_vector_file_is_the_same_input(tmp_path, cache):
    ids = ["a", "b", "c"]
    np.arange(12, dtype="<f4").tofile(tmp_path / "v.feat1CLS")
    first = import_vectors(tmp_path / "v.feat1CLS", ids)
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "v.feat1CLS"
    copy.write_bytes((tmp_path / "v.feat1CLS").read_bytes())  # a new file, a later modification time
    assert not import_vectors(copy, ids).computed
    np.arange(1, 13, dtype="<f4").tofile(copy)  # new contents: imported again
    changed = import_vectors(copy, ids)
    assert changed.computed and changed.content_hash != first.content_hash


# --------------------------------------------------------------------------- vectors keyed by item id, per-item files


def _real_toys_files(shared_data, tmp_path, n=12):
    """n real CLIP text-vector files of amazon-toys-mm, copied into a folder of <id>.pth files."""
    source = shared_data / "amazon-toys-mm" / "text_features"
    folder = tmp_path / "vectors"
    folder.mkdir()
    names = sorted(p.name for p in source.iterdir())[:n]
    for name in names:
        (folder / name).write_bytes((source / name).read_bytes())
    return folder, [Path(n).stem for n in names]


def test_import_a_folder_of_per_item_pth_files(shared_data, tmp_path):
    import torch

    folder, ids = _real_toys_files(shared_data, tmp_path)
    (folder / f"{ids[3]}.pth").write_bytes(b"PK\x03\x04 damaged")  # an unreadable file is masked and reported
    (folder / f"{ids[5]}.pth").unlink()  # a missing file is a missing vector
    targets = ids + ["NOT-THERE"]
    store = import_vectors(folder, targets, modality="text", dataset="toys-subset")
    assert store.vectors.shape == (13, 1, 512)
    assert store.item_present.tolist() == [i not in (3, 5, 12) for i in range(13)]
    assert store.manifest["n_problems"] == 1 and ids[3] in store.manifest["problems"][0]
    expected = torch.load(shared_data / "amazon-toys-mm" / "text_features" / f"{ids[0]}.pth", weights_only=True)
    np.testing.assert_allclose(store.vectors[0, 0], expected.numpy(), rtol=1e-3, atol=1e-3)
    assert import_vectors(folder, targets, modality="text", dataset="toys-subset").computed is False  # reused


def test_the_toys_dataset_ships_its_clip_vectors(shared_data):
    from mp4sr.data import load_dataset

    toys = load_dataset(shared_data / "amazon-toys-mm")
    stores = feature_stores(toys, text=None)  # the 11,907 image vectors of item_feature.jsonl, no encoder
    image = stores["image"]
    assert image.vectors.shape == (11924, 1, 512) and int(image.item_present.sum()) == 11907
    assert image.manifest["mode"] == "imported" and stores["text"] is None


def test_import_parquet_and_npz_keyed_by_item_id(tmp_path):
    import pandas as pd

    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    ids = ["d", "b", "a", "c"]  # any order: rows are matched by id
    pd.DataFrame({"item_id": ids, "embedding": list(vectors)}).to_parquet(tmp_path / "lists.parquet")
    pd.DataFrame({"asin": ids, **{f"v{j}": vectors[:, j] for j in range(3)}}).to_parquet(tmp_path / "columns.parquet")
    np.savez(tmp_path / "vectors.npz", ids=np.array(ids), vectors=vectors)
    targets = ["a", "b", "c", "e"]
    for name in ("lists.parquet", "columns.parquet", "vectors.npz"):
        store = import_vectors(tmp_path / name, targets, dtype="float32")
        assert store.item_present.tolist() == [True, True, True, False], name
        np.testing.assert_array_equal(store.vectors[:3, 0], vectors[[2, 1, 3]])


@pytest.mark.parametrize("frame, message", [
    ({"name": ["a"], "v": [1.0]}, r"no id column"),
    ({"item_id": ["a", "a"], "v": [1.0, 2.0]}, r"an item id appears twice"),
    ({"item_id": ["a", "b"], "v": [[1.0], [1.0, 2.0]]}, r"does not hold vectors of one size"),
])
def test_bad_keyed_tables_are_clear_errors(tmp_path, frame, message):
    import pandas as pd

    pd.DataFrame(frame).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=message):
        import_vectors(tmp_path / "bad.parquet", ["a", "b"])


def test_features_cli_imports_given_vectors_for_training(tmp_path, scientific_mm):
    """`--text-vectors` on `mp4sr features` and `features.text_vectors` in training name the same import."""
    import pandas as pd

    from mp4sr.features.api import run_features

    rng = np.random.default_rng(0)
    ids = [str(i) for i in scientific_mm.items.ids]
    pd.DataFrame({"item_id": ids[::-1], "vector": list(rng.standard_normal((len(ids), 16)).astype(np.float32))}
                 ).to_parquet(tmp_path / "mine.parquet")
    lines = []
    settings = FeatureSettings(image=None, text_vectors=tmp_path / "mine.parquet")
    stores = run_features(str(scientific_mm.source), settings, echo=lines.append)
    assert stores["text"].dim == 16 and stores["text"].item_present.all()
    assert "imported from" in lines[0] and "mine.parquet" in lines[0]
    again = feature_stores(scientific_mm, image=None, text_vectors=str(tmp_path / "mine.parquet"))["text"]
    assert again.path == stores["text"].path and not again.computed


def test_toys_text_and_photos_can_be_encoded_instead_of_imported(shared_data, tmp_path, minilm):
    """The same items, with our own encoders: MiniLM on the raw texts and EfficientNet-Lite0 on the photos."""
    from mp4sr.data import load_dataset
    from mp4sr.data.dataset import Dataset, Sequences

    toys = load_dataset(shared_data / "amazon-toys-mm")
    with_photo = [i for i, p in enumerate(toys.items.image_paths) if p][:4] + [
        i for i, p in enumerate(toys.items.image_paths) if not p][:2]
    items = toys.items
    subset = type(items)(items.ids[with_photo], text=[items.text[i] for i in with_photo],
                         fields={k: [v[i] for i in with_photo] for k, v in items.fields.items()},
                         image_paths=[items.image_paths[i] for i in with_photo])
    small = Dataset("toys-six", subset, np.array(["u"], dtype=object), Sequences.from_lists([list(range(6))]),
                    source=toys.source, extras=toys.extras)
    stores = feature_stores(small, text_encoder=minilm, image="efficientnet-lite0", progress=False)
    assert stores["text"].manifest["mode"] != "imported" and stores["text"].dim == 384
    has_text = np.array([[bool(subset.fields[f][i]) for f in ("title", "description")] for i in range(6)])
    assert has_text.any() and (stores["text"].mask[:, :2] == has_text).all()  # one vector per field that has text
    assert stores["image"].dim == 1280 and stores["image"].item_present.tolist() == [True] * 4 + [False] * 2
