"""Import of precomputed UniSRec / MISSRec vectors, and the ASIN join of amazon-scientific's images."""

import numpy as np
import pytest

from mp4sr.errors import ConfigError, DataError
from mp4sr.features import feature_stores, import_vectors, read_item_ids, read_vectors


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
