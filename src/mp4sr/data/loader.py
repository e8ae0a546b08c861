"""Find datasets by name in the data folders and read them with the right reader."""

from __future__ import annotations

import logging
from pathlib import Path

from mp4sr.config import ColumnSettings, DataSettings
from mp4sr.data.dataset import Dataset, join_datasets
from mp4sr.data.readers import MMSREC_ITEMS, MMSREC_SEQUENCES, read_atomic, read_mmsrec, read_s3rec, read_table, read_unisrec
from mp4sr.errors import DataError
from mp4sr.paths import DATA_ENV, data_roots


log = logging.getLogger("mp4sr.data")
ITEMS_ONLY = "items only"  # an item table without interactions: features, not training
ITEM_TABLE_NAMES = ("articles*.parquet", "articles*.csv", "items.parquet", "items.csv")


def detect_format(folder: Path) -> str | None:
    """'unisrec', 'mmsrec', 's3rec', 'atomic', 'table' or None, from the files in a folder."""
    if any(folder.glob("*.train.inter")) and any(folder.glob("*.item2index")):
        return "unisrec"
    if (folder / MMSREC_SEQUENCES).is_file() and (folder / MMSREC_ITEMS).is_file():
        return "mmsrec"
    if any(p.name.count(".") == 1 for p in folder.glob("*.inter")):
        return "atomic"
    if any(folder.glob("interactions.csv")) or any(folder.glob("interactions.parquet")):
        return "table"
    if len(list(folder.glob("*.txt"))) == 1:
        return "s3rec"
    return None


def find_dataset(name: str | Path) -> Path:
    """The folder of a dataset: a path, or a name looked up in $MP4SR_DATA_DIR, ./data, ../shared/data."""
    path = Path(name).expanduser()
    if path.is_dir() or path.is_file():
        return path
    for root in data_roots():
        if (root / str(name)).exists():
            return root / str(name)
    searched = ", ".join(str(r) for r in data_roots())
    raise DataError(
        f"dataset {str(name)!r} not found (searched {searched}). Put the dataset folder in one of these, "
        f"set ${DATA_ENV} to the folder that holds it, or pass a path; `mp4sr datasets` lists what is found."
    )


def list_datasets() -> list[tuple[str, Path, str]]:
    """(name, folder, format) of every readable dataset in the data folders, item tables without
    interactions as ``ITEMS_ONLY``; the first root wins."""
    seen, found = set(), []
    for root in data_roots():
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            fmt = detect_format(folder) or (ITEMS_ONLY if any(any(folder.glob(n)) for n in ITEM_TABLE_NAMES) else None)
            if fmt and folder.name not in seen:
                seen.add(folder.name)
                found.append((folder.name, folder, fmt))
    return found


def load_dataset(name: str | Path, user_core: int = 5, item_core: int = 0, columns: ColumnSettings | None = None) -> Dataset:
    """Read a dataset by name or path in whatever supported format it is stored; ``columns`` (the
    ``data.columns`` settings) names the columns of tables and atomic files."""
    path = find_dataset(name)
    c = columns or ColumnSettings()
    table_columns = dict(user_col=c.user, item_col=c.item, time_col=c.time, text_fields=c.text, image_field=c.image)
    if path.is_file():
        if path.suffix in {".csv", ".parquet"}:
            return read_table(path, user_core=user_core, item_core=item_core, **table_columns)
        return read_s3rec(path)
    fmt = detect_format(path)
    if fmt == "unisrec":
        return read_unisrec(path)
    if fmt == "mmsrec":
        return read_mmsrec(path)
    if fmt == "atomic":
        return read_atomic(path, user_core=user_core, item_core=item_core, user_col=c.user, item_col=c.item,
                           time_col=c.time, text_fields=c.text)
    if fmt == "table":
        inter = next(p for p in (path / "interactions.parquet", path / "interactions.csv") if p.is_file())
        items = next((p for p in (path / "items.parquet", path / "items.csv") if p.is_file()), None)
        return read_table(inter, name=path.name, items_path=items, user_core=user_core, item_core=item_core,
                          **table_columns)
    if fmt == "s3rec":
        return read_s3rec(next(path.glob("*.txt")), name=path.name)
    raise DataError(
        "no supported dataset files here: expected the UniSRec layout (*.train.inter, *.item2index), "
        f"the MMSRec layout ({MMSREC_SEQUENCES}, {MMSREC_ITEMS}), a RecBole atomic <name>.inter, interactions.csv|parquet, or one S3-Rec <name>.txt",
        path,
    )


def users_of(datasets: list[str | Path], user_core: int = 5, item_core: int = 0,
             columns: ColumnSettings | None = None) -> set[str]:
    """The external ids of every user of ``datasets``."""
    return {str(u) for name in datasets for u in load_dataset(name, user_core, item_core, columns).user_ids}


def exclude_users_of(dataset: Dataset, others: list[str | Path], user_core: int = 5, item_core: int = 0,
                     drop: set[str] | None = None) -> Dataset:
    """``dataset`` without the users (matched on their external ids) of the datasets ``others``: a source
    for pre-training that shares no user with the target it is fine-tuned on. ``drop``: those ids, when
    already read (``users_of``)."""
    kept = dataset.without_users(users_of(others, user_core, item_core) if drop is None else drop)
    if kept.n_users == 0:
        raise DataError(f"dataset {dataset.name}: every user also belongs to {', '.join(map(str, others))}")
    return kept


def training_data(name: str | Path, settings: DataSettings, dataset: Dataset | None = None) -> tuple[Dataset, list[Dataset]]:
    """The data a run trains on: dataset ``name`` (or ``dataset``, already loaded) joined with
    ``settings.join_datasets``, each without the users of ``settings.exclude_users_of``; and the parts joined."""
    d = settings
    parts = [dataset or load_dataset(name, d.user_core, d.item_core, d.columns)]
    parts += [load_dataset(other, d.user_core, d.item_core, d.columns) for other in d.join_datasets]
    if d.exclude_users_of:
        drop = users_of(d.exclude_users_of, d.user_core, d.item_core, d.columns)  # read once for every part
        for i, part in enumerate(parts):
            parts[i] = exclude_users_of(part, d.exclude_users_of, drop=drop)
            log.info("%s: %d users of %s left out, %d remain", part.name, part.n_users - parts[i].n_users,
                     ", ".join(d.exclude_users_of), parts[i].n_users)
    if len(parts) == 1:
        return parts[0], parts
    joined = join_datasets(parts)
    log.info("joined %s: %d users, %d items", joined.name, joined.n_users, joined.n_items)
    return joined, parts
