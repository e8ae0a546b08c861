"""Import of precomputed vectors into a FeatureStore, joined to a dataset's items by external id.

Sources: a matrix whose rows follow an item index (UniSRec / MISSRec ``.feat1CLS`` / ``.feat3CLS`` raw
float32, or a 2-d ``.npy``), a table keyed by item id (``.parquet`` with an id column and the vector as
one list column or as numeric columns; ``.npz`` with ``ids`` and ``vectors``), or one file per item
(a folder of ``<id>.pth`` / ``<id>.pt`` / ``<id>.npy``, or a dataset's ``VectorFiles``)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from mp4sr.data import VectorFiles
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
        raise DataError(f"{len(array)} rows of {array.shape[1]} values, but there are {n_rows} items: row i of a matrix "
                        "is the vector of item i, in the dataset's item order (docs/own-data.md); vectors in another "
                        "order, or of other items, are read by id from a .parquet table with an id column or an .npz "
                        "with arrays 'ids' and 'vectors'", path)
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


PER_ITEM_SUFFIXES = (".pth", ".pt", ".npy")
ID_COLUMNS = ("item_id", "id", "asin", "article_id")
MAX_PROBLEMS_SHOWN = 20

VectorSource = str | Path | VectorFiles


def source_name(source: VectorSource) -> str:
    """A short name of a vector source: the file's name, or the folder of the per-item files."""
    if isinstance(source, VectorFiles):
        folders = {p.parent.name for p in source.files.values()}
        return folders.pop() if len(folders) == 1 else source.listing.name
    return Path(source).name


def per_item_files(source: str | Path | VectorFiles) -> VectorFiles | None:
    """The per-item files of ``source`` (a dataset's VectorFiles, or a folder of ``<id>.pth|.pt|.npy``),
    or None for a single file."""
    if isinstance(source, VectorFiles):
        return source
    folder = Path(source)
    if not folder.is_dir():
        return None
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in PER_ITEM_SUFFIXES and p.is_file()}
    if not files:
        raise DataError(f"no per-item vector files ({', '.join('<id>' + s for s in PER_ITEM_SUFFIXES)}) in this folder", folder)
    return VectorFiles(files, folder)


def _one_vector(path: Path) -> np.ndarray:
    """The vector of one per-item file: a tensor saved with torch.save (read weights_only) or a .npy."""
    if path.suffix == ".npy":
        value = np.load(path, allow_pickle=False)
    else:
        import torch

        value = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"holds a {type(value).__name__}, not a tensor")
        value = value.detach().float().numpy()
    value = np.asarray(value)
    if value.dtype.kind not in "fiu":
        raise ValueError(f"dtype {value.dtype} is not numeric")
    if value.ndim == 2 and value.shape[0] == 1:
        value = value[0]
    if value.ndim != 1 or not len(value):
        raise ValueError(f"shape {tuple(value.shape)} is not one vector")
    return value.astype(np.float32)


def read_vector_files(files: VectorFiles, wanted: Sequence[str], progress: bool = True) -> tuple[list[str], np.ndarray, list[str]]:
    """(ids found, their vectors [found, dim], problems) for the ``wanted`` ids: a missing file leaves its
    item without a vector; a file that is unreadable or of another size is a problem (masked, reported)."""
    ids, rows, problems, dim = [], [], [], None
    todo = [(item, files.files[item]) for item in wanted if item in files.files]
    for item, path in tqdm(todo, desc=f"reading {files.listing.name}", unit="file", disable=not progress, leave=False):
        if not path.is_file():
            continue
        try:
            vector = _one_vector(path)
        except Exception as e:  # torch.load raises many kinds on a damaged archive
            problems.append(f"item {item!r}: cannot read {path} ({type(e).__name__}: {e}); it is masked")
            continue
        if dim is None:
            dim = len(vector)
        if len(vector) != dim:
            problems.append(f"item {item!r}: {path} holds {len(vector)} values, the others {dim}; it is masked")
            continue
        ids.append(item)
        rows.append(vector)
    if not rows:
        raise DataError(f"none of the {len(wanted)} items has a readable vector file (e.g. {todo[:1] or list(files.files.items())[:1]})",
                        files.listing)
    return ids, np.stack(rows), problems


def read_keyed_table(path: Path, id_column: str | None = None) -> tuple[list[str], np.ndarray]:
    """(ids, vectors) of a table keyed by item id: ``.parquet`` (an id column, and the vector as one
    list column or as every numeric column) or ``.npz`` (arrays ``ids`` and ``vectors``)."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                if "ids" not in z or "vectors" not in z:
                    raise DataError(f"expected arrays 'ids' and 'vectors', found {sorted(z.files)}", path)
                ids, table = [str(i) for i in z["ids"]], np.asarray(z["vectors"], dtype=np.float32)
        except (OSError, ValueError) as e:
            raise DataError(f"not a readable .npz file ({e})", path) from None
    else:
        import pandas as pd

        try:
            df = pd.read_parquet(path)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read the table: {e}", path) from None
        column = id_column or next((c for c in ID_COLUMNS if c in df), None)
        if column is None or column not in df:
            raise DataError(f"no id column ({id_column or ' / '.join(ID_COLUMNS)}); columns are {list(df.columns)}", path)
        rest = df.drop(columns=[column])
        lists = [c for c in rest if rest[c].dtype == object]
        if len(lists) == 1:
            try:
                table = np.stack([np.asarray(v, dtype=np.float32) for v in rest[lists[0]]])
            except ValueError as e:
                raise DataError(f"column {lists[0]!r} does not hold vectors of one size ({e})", path) from None
        elif not lists and len(rest.columns):
            table = rest.to_numpy(dtype=np.float32)
        else:
            raise DataError(f"expected one column of vectors or only numeric columns beside {column!r}; "
                            f"found {list(rest.columns)}", path)
        ids = df[column].astype(str).tolist()
    if table.ndim != 2 or len(table) != len(ids):
        raise DataError(f"expected one vector per id, found {len(ids)} ids and vectors of shape {table.shape}", path)
    if len(set(ids)) != len(ids):
        raise DataError("an item id appears twice", path)
    return ids, table


def _source_digest(source: VectorSource) -> str:
    """What identifies an import's input: a file's bytes; per-item files by name, size and time (reading
    thousands of files to hash them would cost as much as importing them)."""
    files = per_item_files(source)
    if files is None:
        with Path(source).open("rb") as f:  # its bytes, not its time: a copied or re-downloaded file is the same input
            return hashlib.file_digest(f, "sha256").hexdigest()
    stats = []
    for item, path in sorted(files.files.items()):
        st = path.stat() if path.is_file() else None
        stats.append((item, path.name, st.st_size if st else -1, st.st_mtime_ns if st else -1))
    return digest("files", stats)


def import_vectors(
    path: VectorSource,
    target_item_ids: Sequence[Any],
    source_item_ids: str | Path | Sequence[Any] | None = None,
    dim: int | None = None,
    modality: str = "image",
    name: str | None = None,
    dataset: str = "imported",
    dtype: str = "float16",
    id_column: str | None = None,
    progress: bool = True,
) -> FeatureStore:
    """A store of precomputed vectors for ``target_item_ids``, from any source of the module docstring.
    For a matrix, row r belongs to item ``source_item_ids[r]`` (default: the target ids themselves).
    Target items absent from the source are masked, so an import may cover only some items (e.g.
    images of a multimodal subset)."""
    targets = [str(i) for i in target_item_ids]
    files = per_item_files(path)
    label = str(files.listing if files else path)
    if files is None and not Path(path).is_file():
        raise DataError("vector file not found", path)
    keyed = files is None and Path(path).suffix in (".parquet", ".npz")
    sources = targets if source_item_ids is None or files or keyed else read_item_ids(source_item_ids)
    input_hash = digest("import", _source_digest(path), ids_digest(sources), ids_digest(targets), dim, id_column, dtype)
    out = store_dir(dataset, modality, f"import-{name or Path(label).name}")

    def build() -> FeatureStore:
        problems: list[str] = []
        if files is not None:
            ids, table, problems = read_vector_files(files, targets, progress)
        elif keyed:
            ids, table = read_keyed_table(Path(path), id_column)
        else:
            ids, table = sources, read_vectors(path, len(sources), dim)
        if dim is not None and table.shape[1] != dim:
            raise DataError(f"vectors have {table.shape[1]} values, expected dim={dim}", label)
        row_of = {item: row for row, item in enumerate(ids)}
        slots = np.array([row_of.get(item, -1) for item in targets], dtype=np.int64).reshape(len(targets), 1)
        matched = int((slots >= 0).sum())
        if not matched:
            raise DataError(
                f"none of the {len(targets)} items (e.g. {targets[:2]}) is among the {len(ids)} items of the "
                f"source (e.g. {ids[:2]}); give the item ids the vectors belong to", label)
        for line in problems[:MAX_PROBLEMS_SHOWN]:
            log.warning(line)
        manifest = {"modality": modality, "dataset": dataset, "encoder": name or Path(label).name, "mode": "imported",
                    "source": label, "source_items": len(ids), "input_hash": input_hash,
                    "n_problems": len(problems), "problems": problems[:100]}
        store = write_store(out, table, slots, targets, manifest, dtype,
                            source=lambda row: f"the vector of {ids[row]!r} in {label}")
        log.info("imported %s vectors for %d of %d items of %s from %s", modality, matched, len(targets), dataset, label)
        return store

    if files is None and not keyed:
        read_vectors(path, len(sources), dim)  # a wrong shape is reported before any lock is taken
    return reuse_or_build(out, input_hash, build)
