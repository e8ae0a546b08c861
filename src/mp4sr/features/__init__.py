"""Item features: text / image encoders, image keywords, imports of precomputed vectors, and the
on-disk FeatureStore the models read.

Typical use (model code)::

    stores = feature_stores(dataset)            # {"text": FeatureStore | None, "image": ...}
    text = stores["text"]; text.check_matches(dataset.items.ids)
    text.vectors  # [n_items, k, d] (memory-mapped float16), text.mask [n_items, k], text.item_present [n_items]

Heavy libraries (torch, transformers, sentence-transformers) are imported only when a model is
actually run, so reusing stored features is fast.
"""

from mp4sr.config import AUTO, FeatureSettings
from mp4sr.features.api import dataset_features, feature_stores, run_features, run_features_merge
from mp4sr.features.catalogue import ItemSource, catalogue_from_table, load_items
from mp4sr.features.chunks import Shard
from mp4sr.features.extract import RunOptions, extract_images, extract_text, merge_shards
from mp4sr.features.images import CLIPImageEncoder, EfficientNetLite0, ImageEncoder, load_image_encoder
from mp4sr.features.importing import import_vectors, read_item_ids, read_vectors
from mp4sr.features.store import FeatureStore, store_dir
from mp4sr.features.text import PooledHFEncoder, SentenceTransformerEncoder, TextEncoder, item_sentences, load_text_encoder

__all__ = [
    "FeatureStore", "store_dir", "feature_stores", "dataset_features", "run_features", "run_features_merge", "FeatureSettings", "AUTO",
    "ItemSource", "catalogue_from_table", "load_items", "Shard", "RunOptions", "extract_text",
    "extract_images", "merge_shards", "import_vectors", "read_vectors", "read_item_ids",
    "TextEncoder", "SentenceTransformerEncoder", "PooledHFEncoder", "load_text_encoder", "item_sentences",
    "ImageEncoder", "EfficientNetLite0", "CLIPImageEncoder", "load_image_encoder",
]
