"""The on-disk FeatureStore: per modality, k vectors per item, a presence mask and a manifest.

A store is a folder ``cache_dir()/features/<dataset>/<modality>-<key>/`` holding

- ``vectors.npy``  [n_items, k, d] (float16 by default), memory-mapped on load;
- ``mask.npy``     [n_items, k] bool, which of the k slots hold a vector;
- ``item_ids.json`` the external id of every item (row i = item index i);
- ``manifest.json`` modality, encoder, mode, shape, dtype, the hash of the inputs, the item index hash
  and the hash of the vectors themselves (``content_hash``).

Every store is built from a *table* of distinct vectors [m, d] and *slots* [n_items, k] that point
into it (-1 = absent): identical sentences or images are computed once and imports are a row join.
Stores are written to a temporary folder and renamed into place, so a reader never sees half a store.
Processes that would build the same store take turns (``reuse_or_build``): the first builds it, the others
then find it and reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from filelock import FileLock, Timeout

from mp4sr.errors import DataError
from mp4sr.paths import cache_dir

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
FLOAT16_MAX = float(np.finfo(np.float16).max)
_FILL_BLOCK = 65536  # items written per step, so a large store never needs [n, k, d] in memory twice


def digest(*parts: Any) -> str:
    """A stable sha256 of JSON-serialisable parts (the 'hash of the inputs' of a manifest)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def ids_digest(item_ids: Iterable[Any]) -> str:
    h = hashlib.sha256()
    for item in item_ids:
        h.update(str(item).encode())
        h.update(b"\n")
    return h.hexdigest()


def vectors_digest(shape: Sequence[int], dtype: str, blocks: Iterable[np.ndarray], mask: np.ndarray) -> str:
    """The ``content_hash`` of a store: its shape, dtype, vectors (``blocks``: consecutive rows of
    [n, k, d] in ``dtype``) and mask; the same for the same vectors however they were produced."""
    h = hashlib.sha256(json.dumps([list(map(int, shape)), str(dtype)]).encode())
    for block in blocks:
        h.update(np.ascontiguousarray(block).tobytes())
    h.update(np.packbits(np.asarray(mask, dtype=bool)).tobytes())
    return h.hexdigest()


def slug(text: str) -> str:
    """A file-name-safe version of an encoder or dataset name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def store_dir(dataset: str, modality: str, key: str) -> Path:
    """Where a store lives: under the cache, never beside the data (which may be read-only)."""
    return cache_dir() / "features" / slug(dataset) / f"{slug(modality)}-{slug(key)}"


@contextmanager
def _turn(path: Path) -> Iterator[None]:
    """Hold the right to build the store at ``path`` (and its '.partial' chunks) in this process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path.parent / f".{path.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process that is building %s", path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def reuse_or_build(path: Path, input_hash: str, build: Callable[[], "FeatureStore | None"]) -> "FeatureStore | None":
    """The store at ``path`` if it was built from these inputs, else what ``build()`` writes there (marked
    ``computed``; None passes through, e.g. a shard whose siblings are not done).

    Parallel runs (``mp4sr experiment --jobs``, several CLI calls) often need the same store at once;
    without turns each would encode everything and one would delete the chunks another is writing. So
    one process at a time builds, and one that waited finds the store built and reuses it.
    """
    store = reusable(path, input_hash)
    if store is not None:
        return store
    with _turn(path):
        store = reusable(path, input_hash)
        if store is not None:
            return store
        store = build()
    if store is not None:
        store.computed = True
    return store


class FeatureStore:
    """A loaded store. The model code uses ``vectors``, ``mask``, ``item_present``, ``dim``, ``item_ids``."""

    def __init__(self, path: Path, vectors: np.ndarray, mask: np.ndarray, manifest: dict[str, Any]):
        self.path = Path(path)
        self.vectors = vectors
        self.mask = mask
        self.manifest = manifest
        self.computed = False  # set by the extraction that just wrote it (False: reused or loaded)

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStore":
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise DataError("not a feature store (no manifest.json); rebuild it with `mp4sr features`", path)
        try:
            manifest = json.loads(manifest_path.read_text())
            vectors = np.load(path / "vectors.npy", mmap_mode="r")
            mask = np.load(path / "mask.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataError(f"unreadable feature store ({e}); delete the folder and rebuild it", path) from None
        expected = tuple(manifest.get("shape", ()))
        if vectors.shape != expected or mask.shape != expected[:2]:
            raise DataError(
                f"feature store files disagree with its manifest (vectors {vectors.shape}, mask {mask.shape}, "
                f"manifest {expected}); delete the folder and rebuild it",
                path,
            )
        return cls(path, vectors, np.asarray(mask, dtype=bool), manifest)

    # ------------------------------------------------------------------ what the model code reads
    @property
    def n_items(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def max_vectors(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[2])

    @property
    def modality(self) -> str:
        return str(self.manifest["modality"])

    @cached_property
    def content_hash(self) -> str:
        """The hash of the vectors and mask (the manifest's, or computed for a store written without it)."""
        found = self.manifest.get("content_hash")
        if found:
            return str(found)
        rows = range(0, self.n_items, _FILL_BLOCK)
        return vectors_digest(self.vectors.shape, self.vectors.dtype.name,
                              (self.vectors[i : i + _FILL_BLOCK] for i in rows), self.mask)

    @cached_property
    def item_present(self) -> np.ndarray:
        """[n_items] bool: the item has at least one vector."""
        return self.mask.any(axis=1)

    @cached_property
    def item_ids(self) -> list[str]:
        return json.loads((self.path / "item_ids.json").read_text())

    def take(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectors (float32) [..., k, d] and mask [..., k] of some items (e.g. a batch's item indexes),
        read from the memory map without loading the whole store."""
        items = np.asarray(items, dtype=np.int64)
        flat = items.reshape(-1)
        vectors = np.asarray(self.vectors[flat], dtype=np.float32)
        return vectors.reshape(*items.shape, *vectors.shape[1:]), self.mask[flat].reshape(*items.shape, -1)

    def pooled(self, normalize: bool = True) -> np.ndarray:
        """[n_items, d] float32: the mean of each item's present vectors (zeros where none)."""
        mask = self.mask[..., None]
        total = np.where(mask, self.vectors, 0).astype(np.float32).sum(axis=1)
        mean = total / np.maximum(mask.sum(axis=1), 1)
        if normalize:
            mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        return mean

    def check_matches(self, item_ids: Sequence[Any]) -> None:
        """Refuse to be used with an item index other than the one it was built for."""
        given = [str(i) for i in item_ids]
        if len(given) == self.manifest["n_items"] and ids_digest(given) == self.manifest["item_ids_hash"]:
            return
        stored = self.item_ids
        first = next((i for i, (a, b) in enumerate(zip(stored, given)) if a != b), min(len(stored), len(given)))
        where = (
            f"item {first} is {stored[first]!r} in the store but {given[first]!r} here"
            if first < min(len(stored), len(given))
            else f"the store has {len(stored)} items, the dataset {len(given)}"
        )
        raise DataError(
            f"this {self.modality} feature store was built for a different item index: {where}. "
            f"Rebuild it for this dataset with `mp4sr features --dataset ...` (or delete the folder).",
            self.path,
        )

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"FeatureStore({m['modality']}, encoder={m['encoder']!r}, mode={m['mode']!r}, "
            f"shape={tuple(m['shape'])}, present={int(self.item_present.sum())}/{self.n_items}, path={str(self.path)!r})"
        )


def reusable(path: Path, input_hash: str) -> FeatureStore | None:
    """The store at ``path`` if it was built from exactly these inputs, else None (it will be rebuilt)."""
    try:
        store = FeatureStore.load(path)
    except DataError:
        return None
    ok = store.manifest.get("input_hash") == input_hash and store.manifest.get("format_version") == FORMAT_VERSION
    return store if ok else None


def check_finite(table: np.ndarray, slots: np.ndarray, item_ids: Sequence[Any], source: Callable[[int], str], dtype: str) -> None:
    """NaN/inf vectors are refused where they enter, naming the first item that would get one."""
    used = np.zeros(len(table), dtype=bool)
    used[slots[slots >= 0]] = True
    limit = FLOAT16_MAX if dtype == "float16" else np.inf
    bad_rows = np.flatnonzero(used & ~(np.abs(table) < limit).all(axis=1))
    if not len(bad_rows):
        return
    row = int(bad_rows[0])
    item = int(np.argwhere(slots == row)[0][0])
    kind = "NaN or inf" if not np.isfinite(table[row]).all() else f"values beyond float16's range ({FLOAT16_MAX:g})"
    hint = "fix or drop that item's input" if kind == "NaN or inf" else "use dtype='float32'"
    raise DataError(
        f"item {item_ids[item]!r} (index {item}) has a vector with {kind} ({source(row)}); "
        f"{len(bad_rows)} vector(s) in all. {hint.capitalize()} and rerun."
    )


def write_store(
    path: Path,
    table: np.ndarray,
    slots: np.ndarray,
    item_ids: Sequence[Any],
    manifest: dict[str, Any],
    dtype: str = "float16",
    extra_files: dict[str, Any] | None = None,
    source: Callable[[int], str] = lambda row: f"row {row}",
) -> FeatureStore:
    """Write a store atomically: vectors[i, j] = table[slots[i, j]] where slots >= 0, zeros elsewhere.
    ``source(row)`` says where a table row came from, for the error about a NaN vector."""
    if dtype not in ("float16", "float32"):
        raise DataError(f"unsupported store dtype {dtype!r}: use 'float16' or 'float32'")
    slots = np.asarray(slots, dtype=np.int64)
    if table.ndim != 2 or len(slots) != len(item_ids):
        raise DataError(f"internal shape mismatch: table {table.shape}, slots {slots.shape}, {len(item_ids)} items")
    check_finite(table, slots, item_ids, source, dtype)
    n, k = slots.shape
    mask = slots >= 0
    manifest = {
        **manifest,
        "format_version": FORMAT_VERSION,
        "shape": [n, k, int(table.shape[1])],
        "dim": int(table.shape[1]),
        "max_vectors": k,
        "dtype": dtype,
        "n_items": n,
        "item_ids_hash": ids_digest(str(i) for i in item_ids),
        "items_present": int(mask.any(axis=1).sum()),
        "vectors_present": int(mask.sum()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        out = np.lib.format.open_memmap(tmp / "vectors.npy", mode="w+", dtype=dtype, shape=(n, k, table.shape[1]))
        for start in range(0, n if len(table) else 0, _FILL_BLOCK):
            block = slots[start : start + _FILL_BLOCK]
            values = np.where(block[..., None] >= 0, table[np.maximum(block, 0)], 0).astype(dtype)
            out[start : start + _FILL_BLOCK] = values
        out.flush()
        blocks = (out[i : i + _FILL_BLOCK] for i in range(0, n, _FILL_BLOCK))
        manifest["content_hash"] = vectors_digest(out.shape, dtype, blocks, mask)
        del out
        np.save(tmp / "mask.npy", mask)
        (tmp / "item_ids.json").write_text(json.dumps([str(i) for i in item_ids]))
        for name, content in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(content, indent=1))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        _replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return FeatureStore.load(path)


def join_stores(name: str, modality: str, stores: Sequence[FeatureStore | None], sizes: Sequence[int],
                item_ids: Sequence[Any]) -> FeatureStore | None:
    """One store for the items of joined datasets (``join_datasets``): the rows of ``stores`` one after
    the other (``sizes[i]`` items each; a dataset without a store gets absent rows). Written under the
    cache and reused while its parts are unchanged; None when no part has a store."""
    present = [s for s in stores if s is not None]
    if not present:
        return None
    dims = sorted({s.dim for s in present})
    if len(dims) > 1:
        raise DataError(f"cannot join {modality} vectors of different sizes ({', '.join(map(str, dims))}): the joined "
                        "datasets need vectors from the same encoder")
    for s, n in zip(stores, sizes):
        if s is not None and s.n_items != n:
            raise DataError(f"internal: a {modality} store of {s.n_items} items for a dataset of {n}", s.path)
    input_hash = digest([s.manifest.get("input_hash") if s else None for s in stores], list(sizes), FORMAT_VERSION)
    encoders = list(dict.fromkeys(str(s.manifest.get("encoder")) for s in present))
    path = store_dir(name, modality, f"join-{input_hash[:16]}")

    def join() -> FeatureStore:
        k = max(s.max_vectors for s in present)
        tables, slots, rows = [], [], 0
        for s, n in zip(stores, sizes):
            part = np.full((n, k), -1, dtype=np.int64)
            if s is not None:
                mask = np.asarray(s.mask, dtype=bool)
                tables.append(np.asarray(s.vectors[mask], dtype=np.float32))
                part[:, : s.max_vectors][mask] = rows + np.arange(int(mask.sum()))
                rows += int(mask.sum())
            slots.append(part)
        manifest = {
            "modality": modality, "dataset": name, "encoder": " + ".join(encoders), "mode": "joined",
            "sources": [str(s.path) if s else None for s in stores], "input_hash": input_hash,
        }
        dtype = "float32" if any(s.manifest.get("dtype") == "float32" for s in present) else "float16"
        return write_store(path, np.concatenate(tables), np.concatenate(slots), item_ids, manifest, dtype)

    return reuse_or_build(path, input_hash, join)


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an older store there is moved aside first (a folder can't be
    renamed over a non-empty one), so ``target`` is always either complete or absent."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
