"""The items whose features are extracted: from a sequence Dataset, or from a bare item table
(e.g. hm-sample, which has product texts and photos but no interaction sequences)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from mp4sr.data import Dataset, ItemCatalogue, find_dataset, load_dataset
from mp4sr.data.loader import ITEM_TABLE_NAMES, detect_format
from mp4sr.data.readers import read_frame
from mp4sr.errors import DataError

# H&M's articles table: the name and description, then the category columns joined into one field.
HM_TEXT_COLUMNS = ("prod_name", "detail_desc")
HM_CATEGORY_COLUMNS = (
    "product_type_name", "product_group_name", "graphical_appearance_name", "colour_group_name",
    "department_name", "index_name", "section_name", "garment_group_name",
)


@dataclass
class ItemSource:
    """What feature extraction needs from a dataset: its name, items, shipped vectors, text layout."""

    name: str
    catalogue: ItemCatalogue
    extras: dict[str, Path] = field(default_factory=dict)
    text_split: str = "auto"  # 'unisrec' for the UniSRec 'title. categories. brand.' text
    folder: Path | None = None  # where the dataset lives (sibling datasets are looked for beside it)


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def catalogue_from_table(
    path: str | Path,
    id_column: str = "article_id",
    text_columns: Sequence[str] | None = HM_TEXT_COLUMNS,
    category_columns: Sequence[str] = HM_CATEGORY_COLUMNS,
    image_dir: str | Path | None = "images",
    image_name: str = "{id:0>10}.jpg",
) -> ItemCatalogue:
    """An ItemCatalogue from an item table (CSV / Parquet), with one text field per column of
    ``text_columns`` plus a 'categories' field joining ``category_columns``, and, for items whose
    file exists, ``image_dir / image_name.format(id=...)`` (relative to the table's folder).
    The defaults read H&M's ``articles.parquet`` and ``images/<article_id zero-padded to 10>.jpg``;
    ``text_columns=None`` takes every text column."""
    path = Path(path)
    table = read_frame(path, ids=(id_column,))
    if text_columns is None:
        text_columns = [c for c in table.columns if c != id_column and c not in category_columns
                        and pd.api.types.is_string_dtype(table[c])]
    missing = [c for c in (id_column, *text_columns, *category_columns) if c not in table]
    if missing:
        raise DataError(f"missing column(s) {missing}; columns are {list(table.columns)}", path)
    if table[id_column].isna().any() or table[id_column].astype(str).duplicated().any():
        raise DataError(f"column {id_column!r} must hold one distinct id per row", path)
    ids = table[id_column].astype(str).tolist()
    clean = lambda col: table[col].fillna("").astype(str).str.strip()  # noqa: E731
    fields = {col: clean(col).tolist() for col in text_columns}
    if category_columns:
        rows = zip(*(clean(c) for c in category_columns))
        fields["categories"] = [", ".join(dict.fromkeys(v for v in row if v)) for row in rows]
    text = [" ".join(_sentence(v) for v in row if v) for row in zip(*fields.values())]
    images = None
    if image_dir is not None:
        folder = (path.parent / image_dir).resolve()
        candidates = [folder / image_name.format(id=i) for i in ids]
        images = [str(p) if p.is_file() else None for p in candidates]
    return ItemCatalogue(ids, text=text, fields=fields, image_paths=images)


def from_dataset(dataset: Dataset) -> ItemSource:
    source = Path(dataset.source) if dataset.source is not None else None
    folder = source if source is None or source.is_dir() else source.parent
    unisrec = folder is not None and detect_format(folder) == "unisrec"
    return ItemSource(dataset.name, dataset.items, dict(dataset.extras), "unisrec" if unisrec else "auto", folder)


def load_items(dataset: str | Path | Dataset | ItemSource) -> ItemSource:
    """The items of a dataset given as a Dataset, a name or a folder (a sequence dataset or an item table)."""
    if isinstance(dataset, ItemSource):
        return dataset
    if isinstance(dataset, Dataset):
        return from_dataset(dataset)
    folder = find_dataset(dataset)
    if folder.is_file() or detect_format(folder) is not None:
        return from_dataset(load_dataset(folder))
    tables = [p for pattern in ITEM_TABLE_NAMES for p in sorted(folder.glob(pattern))]
    if not tables:
        raise DataError("neither a sequence dataset nor an item table (articles*.parquet|csv, items.parquet|csv)", folder)
    if tables[0].name.startswith("articles"):
        return ItemSource(folder.name, catalogue_from_table(tables[0]), folder=folder)
    generic = catalogue_from_table(tables[0], id_column="item_id", text_columns=None, category_columns=(), image_dir=None)
    return ItemSource(folder.name, generic, folder=folder)
