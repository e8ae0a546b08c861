"""Import of precomputed vectors (UniSRec / MISSRec ``.feat1CLS`` / ``.feat3CLS`` raw float32 files,
or ``.npy``) into a FeatureStore, joined to a dataset's items by external id."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mp4sr.data.readers import _lines, _read_index  # the validated line and 'id<TAB>index' readers of the data layer
from mp4sr.errors import ConfigError, DataError
from mp4sr.features.store import FeatureStore, digest, ids_digest, reuse_or_build, store_dir, write_store

log = logging.getLogger(__name__)


def read_vectors(path: str | Path, n_rows: int | None = None, dim: int | None = None) -> np.ndarray:
    """[rows, dim] float32, memory-mapped: a 2-d ``.npy``, or raw little-endian float32 (any other
    name) whose ``dim`` is given or inferred from ``n_rows`` (the size of the file's item index)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("vector file not found", path)
    if dim is not None and dim < 1:
        raise ConfigError(f"{path}: dim={dim}: give the number of values per vector (at least 1)")
    if path.suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r")
        except Exception as e:  # a damaged header raises ValueError, EOFError, SyntaxError, TokenError...
            raise DataError(f"not a readable .npy file ({type(e).__name__}: {e})", path) from None
        if array.dtype.kind not in "fiu":
            raise DataError(f"expected real numbers (float vectors), found dtype {array.dtype}", path)
        if array.ndim != 2 or (dim and array.shape[1] != dim):
            raise DataError(f"expected an array [items, {dim or 'dim'}], found shape {array.shape}", path)
    else:
        count, rest = divmod(path.stat().st_size, 4)
        if rest or not count:
            raise DataError(f"{'the size is not a whole number of float32 values' if count else 'empty file'}: expected "
                            "raw little-endian float32 [items, dim] (the .feat1CLS / .feat3CLS layout)", path)
        if dim is None:
            if not n_rows:
                raise ConfigError(f"{path}: give dim= or the item index of its rows, to know its shape")
            dim, rest = divmod(count, n_rows)
            if rest or not dim:
                raise DataError(f"{count} floats do not split into {n_rows} rows (the size of the item index); "
                                f"give dim= or the right item index", path)
        if count % dim:
            raise DataError(f"{count} floats are not a whole number of {dim}-d rows", path)
        array = np.memmap(path, dtype="<f4", mode="r", shape=(count // dim, dim))
    if n_rows is not None and len(array) != n_rows:
        raise DataError(f"{len(array)} rows of {array.shape[1]} values, but the item index has {n_rows} items; "
                        f"give the item index the rows were written in", path)
    return array


def read_item_ids(source: str | Path | Sequence[Any]) -> list[str]:
    """External ids, row i = item i: a list, a UniSRec ``.item2index`` (id<TAB>index), or one id per line."""
    if not isinstance(source, (str, Path)):
        return [str(i) for i in source]
    path = Path(source)
    if not path.is_file():
        raise DataError("item index file not found", path)
    first = next(_lines(path), (1, ""))[1]
    if "\t" in first:
        return _read_index(path)
    return [line.strip() for _, line in _lines(path) if line.strip()]  # a bad byte is reported at its line


def import_vectors(
    path: str | Path,
    target_item_ids: Sequence[Any],
    source_item_ids: str | Path | Sequence[Any] | None = None,
    dim: int | None = None,
    modality: str = "image",
    name: str | None = None,
    dataset: str = "imported",
    dtype: str = "float16",
) -> FeatureStore:
    """A store of precomputed vectors for ``target_item_ids``; row r of the file belongs to item
    ``source_item_ids[r]`` (default: the target ids themselves). Target items absent from the source
    are masked, so an import may cover only some items (e.g. images of a multimodal subset)."""
    path = Path(path)
    targets = [str(i) for i in target_item_ids]
    sources = targets if source_item_ids is None else read_item_ids(source_item_ids)
    table = read_vectors(path, len(sources), dim)
    row_of = {item: row for row, item in enumerate(sources)}
    slots = np.array([[row_of.get(item, -1)] for item in targets], dtype=np.int64).reshape(len(targets), 1)
    matched = int((slots >= 0).sum())
    if not matched:
        raise DataError(
            f"none of the {len(targets)} items (e.g. {targets[:2]}) is among the {len(sources)} items of the "
            f"file's item index (e.g. {sources[:2]}); give the item index the file's rows were written in", path)
    with path.open("rb") as f:  # its bytes, not its time: a copied or re-downloaded file is the same input
        file_hash = hashlib.file_digest(f, "sha256").hexdigest()
    input_hash = digest("import", file_hash, ids_digest(sources), ids_digest(targets), table.shape[1], dtype)
    out = store_dir(dataset, modality, f"import-{name or path.name}")
    manifest = {"modality": modality, "dataset": dataset, "encoder": name or path.name, "mode": "imported",
                "source": str(path), "source_items": len(sources), "input_hash": input_hash}
    store = reuse_or_build(out, input_hash, lambda: write_store(out, table, slots, targets, manifest, dtype,
                                                                source=lambda row: f"row {row} of {path}"))
    if store.computed:
        log.info("imported %s vectors for %d of %d items of %s from %s", modality, matched, len(targets), dataset, path)
    return store
