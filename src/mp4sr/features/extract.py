"""Extraction of text and image feature stores from an item catalogue.

Both modalities go the same way (``_run``): per item, the list of its inputs (sentences or image
paths) -> the distinct inputs, each encoded once, in resumable / shardable chunks -> a store whose
manifest hash covers the encoder, the options, the inputs and the item index, so a second run with
the same inputs reuses the store without loading a model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from mp4sr.config import AUTO, FeatureSettings
from mp4sr.data import ItemCatalogue
from mp4sr.errors import ConfigError, DataError
from mp4sr.features.chunks import ChunkResult, Encode, Shard, compute_chunked, partial_dir
from mp4sr.features.images import MODES, ImageEncoder, load_image_encoder, read_images
from mp4sr.features.store import FeatureStore, digest, ids_digest, reusable, reuse_or_build, store_dir, write_store
from mp4sr.features.text import TextEncoder, item_sentences, load_text_encoder

log = logging.getLogger(__name__)
MAX_PROBLEMS_IN_MANIFEST = 100
DEFAULT = FeatureSettings()  # the defaults of the settings these functions take one by one


@dataclass
class _Job:
    """One store to build."""

    dataset: str
    modality: str
    key: str
    item_ids: list[str]
    per_item: list[list[Hashable]]  # each item's inputs, at most max_vectors
    encode: Encode
    identity: dict[str, Any]  # encoder, mode, options: in the manifest and in the hash
    fingerprint: Callable[[list], Any] = lambda inputs: inputs  # how the inputs enter the hash
    order: Callable[[Any], Any] | None = None  # computation order of the distinct inputs
    notes_file: str | None = None
    desc: str = "encoding"


@dataclass
class RunOptions:
    """How a job runs (none of these change the vectors, so none are in the manifest hash)."""

    chunk_size: int = 1024
    shard: Shard | None = None
    merge_parts: Sequence[Path] | None = None  # not None: merge shards, compute nothing
    dtype: str = DEFAULT.dtype
    progress: bool = True
    on_chunk: Callable[[int], None] | None = None


def build_slots(per_item: list[list[Hashable]], order: Callable[[Any], Any] | None = None) -> tuple[list, np.ndarray]:
    """The distinct inputs (in computation order) and slots [n_items, k] pointing into them (-1: none)."""
    unique = sorted({x for xs in per_item for x in xs}, key=order)
    index = {x: i for i, x in enumerate(unique)}
    k = max(1, max((len(xs) for xs in per_item), default=0))
    slots = np.full((len(per_item), k), -1, dtype=np.int64)
    for i, xs in enumerate(per_item):
        slots[i, : len(xs)] = [index[x] for x in xs]
    return unique, slots


def _run(job: _Job, opts: RunOptions) -> FeatureStore | None:
    """Reuse the store if its inputs are unchanged; else compute (this shard of) it; None = shard done.

    One process at a time builds a store (``reuse_or_build``); shards compute their own chunks side by
    side and take turns only to assemble the store."""
    inputs, slots = build_slots(job.per_item, job.order)
    if not inputs:
        raise DataError(f"no item of {job.dataset!r} has {job.modality} to encode")
    input_hash = digest(job.identity, opts.dtype, job.fingerprint(inputs),
                        hashlib.sha256(slots.tobytes()).hexdigest(), ids_digest(job.item_ids))
    path = store_dir(job.dataset, job.modality, job.key)
    started = time.perf_counter()
    folder = partial_dir(path)

    def compute(assemble: bool = True) -> ChunkResult | None:
        return compute_chunked(
            inputs, job.encode, folder, input_hash, opts.chunk_size, shard=opts.shard,
            allow_compute=opts.merge_parts is None, progress=opts.progress, desc=job.desc,
            on_chunk=opts.on_chunk, parts=opts.merge_parts or (), assemble=assemble,
        )

    def build() -> FeatureStore | None:
        result = compute()
        if result is None:
            return None
        _report(result.problems, job)
        kept = np.where((slots >= 0) & result.ok[np.maximum(slots, 0)], slots, -1)
        manifest = {
            "modality": job.modality, "dataset": job.dataset, **job.identity, "input_hash": input_hash,
            "n_inputs": len(inputs), "seconds": round(time.perf_counter() - started, 2),
            "n_problems": len(result.problems), "problems": result.problems[:MAX_PROBLEMS_IN_MANIFEST],
        }
        notes = {job.notes_file: dict(zip(map(str, inputs), result.notes))} if job.notes_file and result.notes else None
        encoder = job.identity.get("encoder")
        store = write_store(path, result.vectors, kept, job.item_ids, manifest, opts.dtype, notes,
                            source=lambda row: f"{job.modality} encoder {encoder} on {inputs[row]!r}")
        shutil.rmtree(folder, ignore_errors=True)
        return store

    if opts.shard is not None and reusable(path, input_hash) is None:
        compute(assemble=False)  # side by side with the other shards
    store = reuse_or_build(path, input_hash, build)
    if store is not None and not store.computed:
        log.info("%s features of %s: reusing %s (same inputs)", job.modality, job.dataset, path)
    return store


def _report(problems: list[str], job: _Job, shown: int = 20) -> None:
    for line in problems[:shown]:
        log.warning("%s features of %s: %s", job.modality, job.dataset, line)
    if len(problems) > shown:
        log.warning("... and %d more (all are listed in the store's manifest.json)", len(problems) - shown)


# --------------------------------------------------------------------------- text


def extract_text(
    catalogue: ItemCatalogue,
    dataset: str,
    encoder: str | TextEncoder | None = None,
    *,
    split: str = AUTO,
    max_vectors: int = DEFAULT.max_vectors,
    pooling: str = DEFAULT.text_pooling,
    batch_size: int = 64,
    options: RunOptions | None = None,
) -> FeatureStore | None:
    """Text store of a catalogue: one vector per sentence / field (at most ``max_vectors`` per item).

    Identical sentences across items are encoded once, in chunks ordered by length (little padding).
    Returns None when ``options.shard`` is set and other shards are not finished yet.
    """
    encoder = encoder if isinstance(encoder, TextEncoder) else load_text_encoder(encoder, pooling)
    job = _Job(
        dataset=dataset, modality="text",
        key=f"{encoder.name}-{split}-k{max_vectors}",
        item_ids=[str(i) for i in catalogue.ids],
        per_item=item_sentences(catalogue, split, max_vectors),
        encode=lambda texts: ChunkResult(encoder.encode(texts, batch_size), np.ones(len(texts), bool), []),
        identity={"encoder": encoder.name, "encoder_fingerprint": encoder.fingerprint, "mode": "sentences",
                  "split": split, "max_vectors_limit": max_vectors},
        order=lambda text: (len(text), text),
        desc=f"text {dataset}",
    )
    return _run(job, options or RunOptions())


# --------------------------------------------------------------------------- images


def _file_state(path: str) -> tuple[str, int, int] | tuple[str, None, None]:
    """What of an image file enters the hash: size and modification time (reading every image to hash
    its bytes would cost as much IO as encoding it)."""
    path = os.path.abspath(path)  # the same file reached from another working directory is the same input
    try:
        st = os.stat(path)
        return (path, st.st_size, st.st_mtime_ns)
    except OSError:
        return (path, None, None)


def _item_images(entry: Any) -> list[str]:
    if entry is None:
        return []
    if isinstance(entry, (list, tuple)):
        return [str(p) for p in entry if p]
    return [str(entry)] if str(entry) else []


def _image_encode(encoder: ImageEncoder, mode: str, text_encoder: TextEncoder | None, n_keywords: int,
                  batch_size: int, owner: dict[str, str]) -> Encode:
    """Encode a chunk of image paths; unreadable images are masked and reported with their item."""

    def encode(paths: list[str]) -> ChunkResult:
        vectors, ok, problems, notes = [], [], [], []
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            images, errors = read_images(batch, encoder.image_size)
            good = [im for im in images if im is not None]
            for path, error in zip(batch, errors):
                ok.append(error is None)
                if error:
                    problems.append(f"item {owner[path]!r}: cannot read image {path} ({error}); it is masked")
            if not good:
                notes.extend([""] * len(batch))
                continue
            if mode == "embed":
                encoded, sentences = encoder.embed(good), [""] * len(good)
            else:
                sentences = [", ".join(words) for words in encoder.keywords(good, n_keywords)]
                unique = {s: i for i, s in enumerate(dict.fromkeys(sentences))}  # equal keyword lists: encode once
                table = text_encoder.encode(list(unique))  # type: ignore[union-attr]
                encoded = table[[unique[s] for s in sentences]]
            vectors.append(encoded)
            readable = iter(sentences)
            notes.extend(next(readable) if e is None else "" for e in errors)
        ok_array = np.array(ok, dtype=bool)
        dim = vectors[0].shape[1] if vectors else 0
        full = np.zeros((len(paths), dim), dtype=np.float32)
        if vectors:
            full[ok_array] = np.concatenate(vectors)
        return ChunkResult(full, ok_array, problems, notes if mode == "keywords" else None)

    return encode


def extract_images(
    catalogue: ItemCatalogue,
    dataset: str,
    encoder: str | ImageEncoder | None = None,
    *,
    mode: str = DEFAULT.image_mode,
    text_encoder: str | TextEncoder | None = None,
    n_keywords: int = DEFAULT.n_keywords,
    vocabulary: str | Path | Sequence[str] | None = None,
    max_vectors: int = DEFAULT.max_vectors,
    batch_size: int = 32,
    options: RunOptions | None = None,
) -> FeatureStore | None:
    """Image store of a catalogue: one vector per image; items without a (readable) image are masked.

    ``mode='embed'``: the image encoder's pooled embedding. ``mode='keywords'`` (the paper's): the top
    ``n_keywords`` words of the encoder's dictionary joined into a sentence and encoded by the text
    encoder, so images land in the text space.
    """
    if mode not in MODES:
        raise ConfigError(f"image mode {mode!r}: use one of {', '.join(MODES)}")
    if catalogue.image_paths is None:
        raise DataError(f"the items of {dataset!r} have no image files")
    encoder = encoder if isinstance(encoder, ImageEncoder) else load_image_encoder(encoder, vocabulary)
    identity: dict[str, Any] = {"encoder": encoder.name, "encoder_fingerprint": encoder.fingerprint, "mode": mode}
    key = f"{encoder.name}-{mode}"
    if mode == "keywords":
        text_encoder = text_encoder if isinstance(text_encoder, TextEncoder) else load_text_encoder(text_encoder)
        identity.update(text_encoder=text_encoder.name, text_encoder_fingerprint=text_encoder.fingerprint,
                        n_keywords=n_keywords, vocabulary=digest(encoder.vocabulary)[:16])
        key += f"-n{n_keywords}-{text_encoder.name}"
    per_item = [_item_images(p)[:max_vectors] for p in catalogue.image_paths]
    owner: dict[str, str] = {}
    for item, paths in zip(catalogue.ids, per_item):
        for path in paths:
            owner.setdefault(path, str(item))
    job = _Job(
        dataset=dataset, modality="image", key=key,
        item_ids=[str(i) for i in catalogue.ids],
        per_item=per_item,
        encode=_image_encode(encoder, mode, text_encoder, n_keywords, batch_size, owner),  # type: ignore[arg-type]
        identity=identity,
        fingerprint=lambda paths: [_file_state(p) for p in paths],
        notes_file="keywords.json" if mode == "keywords" else None,
        desc=f"images {dataset} ({mode})",
    )
    return _run(job, options or RunOptions(chunk_size=256))


def merge_shards(catalogue: ItemCatalogue, dataset: str, modality: str, parts: Sequence[str | Path] = (),
                 **settings: Any) -> FeatureStore:
    """Combine the chunks of all shards into the store one pass would have written.

    ``settings`` must be those the shards ran with (encoder, mode, max_vectors, ...); ``parts`` are
    shards' '.partial' folders copied from other machines (those in this cache are found anyway).
    """
    options: RunOptions = settings.pop("options", None) or RunOptions(chunk_size=1024 if modality == "text" else 256)
    options = replace(options, merge_parts=[Path(p) for p in parts], shard=None)
    extract = {"text": extract_text, "image": extract_images}.get(modality)
    if extract is None:
        raise ConfigError(f"modality {modality!r}: use 'text' or 'image'")
    store = extract(catalogue, dataset, **settings, options=options)
    assert store is not None  # merging computes nothing: it returns a store or raises
    return store
