"""The high-level entry points: a dataset's text and image stores with sensible defaults, and the
functions behind ``mp4sr features`` and ``mp4sr features-merge``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from mp4sr.config import AUTO, FeatureSettings, build_config
from mp4sr.data import Dataset, VectorFiles, find_dataset
from mp4sr.errors import ConfigError, DataError
from mp4sr.features.catalogue import ItemSource, load_items
from mp4sr.features.chunks import Shard
from mp4sr.features.extract import RunOptions, extract_images, extract_text
from mp4sr.features.importing import VectorSource, import_vectors, source_name
from mp4sr.features.store import FeatureStore
from mp4sr.features.text import TextEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Call:
    """How one call runs, beside its FeatureSettings (none of this changes the vectors)."""

    shard: Shard | None = None
    merge_parts: Sequence[Path] | None = None
    progress: bool = True
    text_encoder: TextEncoder | None = None  # an encoder object in place of the settings' text (Python API)

    def options(self, settings: FeatureSettings, chunk_size: int) -> RunOptions:
        return RunOptions(chunk_size=chunk_size, shard=self.shard, merge_parts=self.merge_parts,
                          dtype=settings.dtype, progress=self.progress)

    def text(self, settings: FeatureSettings) -> str | TextEncoder | None:
        """'auto', an encoder (name, folder or object), or None for no text store."""
        return self.text_encoder if self.text_encoder is not None else settings.text


def with_changes(settings: FeatureSettings | None, changes: dict[str, Any]) -> FeatureSettings:
    """``settings`` (default: the defaults) with some of its fields changed, validated."""
    if not changes:
        return settings or FeatureSettings()
    base = settings.model_dump() if settings is not None else {}
    return build_config(FeatureSettings, base={**base, **changes})


Outcome = tuple[FeatureStore | None, str]  # the store (None: none, or this shard is done) and what happened


def _text_store(src: ItemSource, s: FeatureSettings, call: _Call) -> Outcome:
    text = call.text(s)
    if text is None:
        return None, "skipped"
    if s.text_vectors is not None:
        return _import_given(src, "text", s.text_vectors, s, call)
    if text == AUTO and "text_vectors" in src.extras:
        return _import_shipped(src, "text", s, call)
    cat = src.catalogue
    if not (cat.fields or (cat.text and any(t.strip() for t in cat.text))):
        if text != AUTO:
            raise DataError(f"the items of {src.name!r} have no text to encode")
        return None, "no item text in this dataset"
    store = extract_text(cat, src.name, None if text == AUTO else text, split=src.text_split,
                         max_vectors=s.max_vectors, pooling=s.text_pooling, options=call.options(s, 1024))
    return store, "extracted"


def _import_shipped(src: ItemSource, modality: str, s: FeatureSettings, call: _Call) -> Outcome:
    """The vectors that came with the dataset (a matrix file or one file per item)."""
    return _import_given(src, modality, src.extras[f"{modality}_vectors"], s, call)


def _import_given(src: ItemSource, modality: str, source: VectorSource, s: FeatureSettings, call: _Call) -> Outcome:
    store = import_vectors(source, src.catalogue.ids, modality=modality, name=source_name(source), dataset=src.name,
                           dtype=s.dtype, progress=call.progress)
    return store, f"imported from {store.manifest['source']}"


def _sibling_vectors(src: ItemSource, image_from: str | None) -> tuple[VectorSource, list[str], str] | None:
    """Precomputed image vectors of another dataset with the same item ids (e.g. amazon-scientific-mm
    for amazon-scientific): (file, that dataset's item ids, its name), or None."""
    if image_from is None or image_from == "none":
        return None
    name = f"{src.name}-mm" if image_from == AUTO else image_from
    beside = src.folder.parent / name if src.folder is not None else None
    try:
        sibling = load_items(beside if beside is not None and beside.is_dir() else find_dataset(name))
    except DataError:
        if image_from == AUTO:
            return None
        raise
    if "image_vectors" not in sibling.extras:
        if image_from == AUTO:
            return None
        raise DataError(f"dataset {name!r} has no precomputed image vectors (a .feat3CLS file) to import")
    return sibling.extras["image_vectors"], [str(i) for i in sibling.catalogue.ids], sibling.name


def _image_store(src: ItemSource, s: FeatureSettings, call: _Call) -> Outcome:
    if s.image is None:
        return None, "skipped"
    if s.image_vectors is not None:
        return _import_given(src, "image", s.image_vectors, s, call)
    paths = src.catalogue.image_paths
    has_files = paths is not None and any(paths)
    if s.image == AUTO and s.image_mode == "embed" and "image_vectors" in src.extras:
        return _import_shipped(src, "image", s, call)
    if has_files or s.image != AUTO:
        if not has_files:
            raise DataError(f"the items of {src.name!r} have no image files to encode with {s.image!r}")
        text = call.text(s)
        text_encoder = None if text is None or text == AUTO else text  # keywords go to the text store's space
        store = extract_images(src.catalogue, src.name, None if s.image == AUTO else s.image, mode=s.image_mode,
                               text_encoder=text_encoder, n_keywords=s.n_keywords, vocabulary=s.vocabulary,
                               max_vectors=s.max_vectors, options=call.options(s, 256))
        return store, "extracted"
    found = _sibling_vectors(src, s.image_from) or (
        (src.extras["image_vectors"], None, src.name) if "image_vectors" in src.extras else None)
    if found is None:
        return None, "no images or image vectors for this dataset"
    source, ids, origin = found
    if s.image_mode != "embed":
        raise ConfigError(f"image_mode 'keywords' needs image files; {src.name!r} only has precomputed image "
                          f"vectors ({source_name(source)}). Use image_mode 'embed'.")
    store = import_vectors(source, src.catalogue.ids, source_item_ids=None if isinstance(source, VectorFiles) else ids,
                           modality="image", name=f"{origin}-{source_name(source)}", dataset=src.name, dtype=s.dtype,
                           progress=call.progress)
    return store, f"imported from {store.manifest['source']}, joined on item id"


def feature_stores(
    dataset: str | Path | Dataset | ItemSource,
    settings: FeatureSettings | None = None,
    *,
    text_encoder: TextEncoder | None = None,
    shard: str | Shard | None = None,
    progress: bool = True,
    **changes: Any,
) -> dict[str, FeatureStore | None]:
    """The text and image stores of a dataset, computed or imported on first use and reused after.

    Defaults ('auto'): vectors shipped with the dataset (UniSRec .feat1CLS / .feat3CLS) are imported;
    otherwise text is encoded with all-MiniLM-L6-v2 and image files with EfficientNet-Lite0; a dataset
    without images gets the image vectors of its '<name>-mm' sibling (or ``image_from=``) joined on the
    item id. ``settings``: a FeatureSettings (default: its defaults); ``changes``: fields of it to change,
    e.g. ``text=None`` (no text store) or ``image='efficientnet-lite0'``. ``text_encoder``: an encoder
    object to use instead of the settings' text. A value is None when the dataset has nothing for that
    modality.
    """
    settings = with_changes(settings, changes)
    call = _Call(shard=Shard.parse(shard), progress=progress, text_encoder=text_encoder)
    src = load_items(dataset)
    return {"text": _text_store(src, settings, call)[0], "image": _image_store(src, settings, call)[0]}


def describe(modality: str, store: FeatureStore | None, what: str, seconds: float, shard: Shard | None = None) -> str:
    """One line of `mp4sr features` output."""
    if store is None:
        if what == "extracted":
            return (f"{modality}: shard {shard} done; when every shard is, "
                    f"run `mp4sr features-merge` with the same options")
        return f"{modality}: no store ({what})"
    m = store.manifest
    action = f"{what} in {seconds:.1f} s" if store.computed else "reused (inputs unchanged)"
    problems = f"; {m['n_problems']} unreadable (masked, listed in manifest.json)" if m.get("n_problems") else ""
    return (f"{modality}: {m['encoder']} [{m['mode']}] {action}: {int(store.item_present.sum()):,}/{store.n_items:,} "
            f"items present, shape {tuple(m['shape'])} {m['dtype']}{problems}\n  -> {store.path}")


def run_features(
    dataset: str | Path | Dataset | ItemSource,
    settings: FeatureSettings | None = None,
    *,
    shard: str | Shard | None = None,
    merge_parts: Sequence[Path] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, FeatureStore | None]:
    """`mp4sr features`: build (or reuse) a dataset's stores and print what was done."""
    settings = settings or FeatureSettings()
    call = _Call(shard=Shard.parse(shard), merge_parts=merge_parts, progress=progress)
    src = load_items(dataset)
    stores = {}
    for modality, build in (("text", _text_store), ("image", _image_store)):
        started = time.perf_counter()
        store, what = build(src, settings, call)
        echo(describe(modality, store, what, time.perf_counter() - started, call.shard))
        stores[modality] = store
    return stores


def run_features_merge(dataset: str | Path | Dataset | ItemSource, parts: Sequence[str | Path] = (),
                       settings: FeatureSettings | None = None, *, progress: bool = True,
                       echo: Callable[[str], None] = print) -> dict[str, FeatureStore | None]:
    """`mp4sr features-merge`: combine the shards' chunks into the stores (``settings`` must be those the
    shards ran with); ``parts`` are '.partial' folders copied from other machines."""
    return run_features(dataset, settings, merge_parts=[Path(p) for p in parts], progress=progress, echo=echo)


def dataset_features(settings: FeatureSettings, dataset: Dataset, parts: list[Dataset] | None = None,
                     progress: bool = True) -> dict[str, FeatureStore]:
    """The feature stores a run of ``dataset`` reads (computed or imported once, then from the cache), by
    modality, only those it has. ``parts``: the datasets that ``dataset`` joins, whose stores are computed
    one by one and then joined."""
    from mp4sr.features.store import join_stores

    if parts and len(parts) > 1:
        each = [feature_stores(part, settings, progress=progress) for part in parts]
        sizes = [part.n_items for part in parts]
        stores = {m: join_stores(dataset.name, m, [s[m] for s in each], sizes, dataset.items.ids)
                  for m in ("text", "image")}
    else:
        stores = feature_stores(dataset, settings, progress=progress)
    found = {m: s for m, s in stores.items() if s is not None}
    for store in found.values():
        store.check_matches(dataset.items.ids)
    return found
