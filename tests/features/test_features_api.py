"""feature_stores / run_features: the right store for each dataset by default."""

import numpy as np
import pytest

from mp4sr.errors import ConfigError, DataError
from mp4sr.features import catalogue_from_table, feature_stores, load_items, run_features, run_features_merge


def test_amazon_scientific_defaults(scientific, make_fake_encoder):
    """Text from the UniSRec 'title. categories. brand.' layout (3 vectors per item), images from the
    -mm sibling joined on the ASIN. (A fake text encoder stands in for MiniLM to keep this fast.)"""
    assert load_items(scientific).text_split == "unisrec"
    encoder = make_fake_encoder()
    stores = feature_stores(scientific, text_encoder=encoder, progress=False)
    text, image = stores["text"], stores["image"]
    assert text.vectors.shape == (4385, 3, 8) and text.item_present.all()
    assert text.manifest["split"] == "unisrec" and text.manifest["n_inputs"] < text.manifest["vectors_present"]
    assert image.vectors.shape == (4385, 1, 512) and int(image.item_present.sum()) == 1585
    for store in stores.values():
        store.check_matches(scientific.items.ids)
    with pytest.raises(ConfigError, match="keywords' needs image files"):
        feature_stores(scientific, text=None, image_mode="keywords")
    assert feature_stores(scientific, text=None, image_from=None)["image"] is None


def test_dataset_without_content_has_no_stores(shared_data):
    stores = feature_stores(shared_data / "amazon-beauty-ids")
    assert stores == {"text": None, "image": None}
    with pytest.raises(DataError, match="no image files"):
        feature_stores(shared_data / "amazon-beauty-ids", text=None, image="efficientnet-lite0")


def test_hm_sample_catalogue(hm, shared_data):
    cat = hm.catalogue
    assert hm.name == "hm-sample" and len(cat) == 1000
    assert list(cat.fields) == ["prod_name", "detail_desc", "categories"]
    with_image = [p for p in cat.image_paths if p]
    assert len(with_image) == 100 and all(p.endswith(".jpg") and "/images/0" in p for p in with_image)
    assert cat.fields["categories"][0].startswith("Leggings/Tights, Garment Lower body")
    with pytest.raises(DataError, match="missing column"):
        catalogue_from_table(shared_data / "hm-sample" / "articles_sample.parquet", id_column="item_id")


def test_run_features_prints_what_it_did(shared_data, capsys):
    run_features(str(shared_data / "amazon-scientific-mm"), progress=False)
    first = capsys.readouterr().out
    assert "text: Scientific.feat1CLS [imported] imported from" in first and "1,585/1,585 items present" in first
    run_features(str(shared_data / "amazon-scientific-mm"), progress=False)
    assert "reused (inputs unchanged)" in capsys.readouterr().out
    run_features_merge(str(shared_data / "amazon-scientific-mm"), progress=False)  # nothing to merge: reused
    assert capsys.readouterr().out.count("reused (inputs unchanged)") == 2


def test_a_store_follows_its_item_index(scientific, scientific_mm):
    image = feature_stores(scientific_mm, text=None)["image"]
    with pytest.raises(DataError, match="different item index.*item 0 is"):
        image.check_matches(scientific.items.ids)
    np.testing.assert_array_equal(image.item_present, np.ones(1585, bool))


def test_one_form_of_the_settings(scientific, make_fake_encoder):
    """The settings of training (features.*), of `mp4sr features` and of the Python API are one class,
    and a store asked for by a FeatureSettings is the store asked for by its fields."""
    import mp4sr.config as config
    import mp4sr.features as features
    from mp4sr.features.api import dataset_features

    assert features.FeatureSettings is config.FeatureSettings and features.AUTO is config.AUTO
    assert isinstance(config.RunConfig().features, config.FeatureSettings)
    with pytest.raises(ConfigError, match="image_mode"):
        feature_stores(scientific, image_mode="words")
    settings = config.FeatureSettings(image=None, max_vectors=2)
    by_fields = feature_stores(scientific, text_encoder=make_fake_encoder(), image=None, max_vectors=2, progress=False)
    by_object = feature_stores(scientific, settings, text_encoder=make_fake_encoder(), progress=False)
    assert by_object["text"].path == by_fields["text"].path and not by_object["text"].computed
    assert by_object["text"].vectors.shape == (4385, 2, 8) and by_object["image"] is None
    run = dataset_features(config.FeatureSettings(text=None), scientific, progress=False)
    assert set(run) == {"image"} and run["image"].path == feature_stores(scientific, text=None)["image"].path
