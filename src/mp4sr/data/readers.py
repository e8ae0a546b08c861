"""Readers of the supported on-disk formats into the canonical ``Dataset``.

- UniSRec layout: ``X.item2index``, ``X.user2index``, ``X.text``, ``X.{train,valid,test}.inter``
  (and optionally ``X.feat1CLS`` / ``X.feat3CLS`` precomputed vectors).
- S3-Rec layout: one ``user item item ...`` line per user, chronological.
- RecBole atomic files: ``X.inter`` with ``name:type`` headers, optional ``X.item``.
- A table (CSV or Parquet) of (user, item, timestamp), with an optional item table.
- MMSRec layout: ``test_seq.jsonl`` sequences, ``item.jsonl`` / ``item_feature.jsonl`` naming per-item
  text, photo and vector files.

Raw interaction logs (atomic, table) go through ``from_interactions``: duplicates dropped (the last
kept), k-core filtered, timestamp ties broken by file order, sequences sorted by time. Timestamps are
numbers or ISO dates and datetimes (``timestamps``), whatever type a file declares.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from mp4sr.data.dataset import Dataset, ItemCatalogue, Sequences, VectorFiles
from mp4sr.errors import DataError

UNISREC_INTER_HEADER = ["user_id:token", "item_id_list:token_seq", "item_id:token"]


# --------------------------------------------------------------------------- small line helpers


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without newline); clear errors for missing or non-UTF-8 files."""
    if not path.is_file():
        raise DataError("file not found", path)
    with open(path, "rb") as f:  # decoded line by line, so that a bad byte is reported at its line
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"not valid UTF-8 text ({e.reason} at byte {e.start + 1} of the line)", path, number) from None
            yield number, line.rstrip("\r\n")


def _int(token: str, path: Path, line: int, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise DataError(f"{what} {token!r} is not an integer", path, line) from None
    if value < 0 or value >= 2**62:
        raise DataError(f"{what} {token!r} is out of range", path, line)
    return value


def _read_index(path: Path) -> list[str]:
    """``external_id<TAB>index`` lines; indexes must be exactly 0..n-1."""
    ids: dict[int, str] = {}
    for number, line in _lines(path):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"expected 'id<TAB>index', found {len(parts)} fields", path, number)
        index = _int(parts[1], path, number, "index")
        if index in ids:
            raise DataError(f"index {index} appears twice", path, number)
        ids[index] = parts[0]
    if not ids:
        raise DataError("empty file: expected 'id<TAB>index' lines", path)
    if sorted(ids) != list(range(len(ids))):
        raise DataError(f"indexes must be 0..{len(ids) - 1} without gaps", path)
    return [ids[i] for i in range(len(ids))]


# --------------------------------------------------------------------------- UniSRec layout


def _unisrec_prefix(folder: Path) -> str:
    found = sorted(p.name[: -len(".train.inter")] for p in folder.glob("*.train.inter"))
    if len(found) != 1:
        raise DataError(f"expected exactly one '*.train.inter' file in the UniSRec layout, found {found}", folder)
    return found[0]


def read_unisrec_split(path: Path, n_users: int, n_items: int) -> list[tuple[int, list[int], int]]:
    """Rows (user, history, target) of a UniSRec ``.inter`` file, validated."""
    rows = []
    lines = _lines(path)
    header = next(lines, None)
    if header is None:
        raise DataError(f"empty file: expected the header {'<TAB>'.join(UNISREC_INTER_HEADER)}", path)
    if header[1].split("\t") != UNISREC_INTER_HEADER:
        raise DataError(f"wrong header {header[1]!r}: expected {'<TAB>'.join(UNISREC_INTER_HEADER)}", path, 1)
    for number, line in lines:
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataError(f"expected 3 tab-separated fields, found {len(parts)}", path, number)
        user = _int(parts[0], path, number, "user index")
        if user >= n_users:
            raise DataError(f"unknown user index {user} (the user index has {n_users} users)", path, number)
        history = [_int(t, path, number, "item index") for t in parts[1].split()]
        target = _int(parts[2], path, number, "item index")
        for item in (*history, target):
            if item >= n_items:
                raise DataError(f"unknown item index {item} (the item index has {n_items} items)", path, number)
        rows.append((user, history, target))
    if not rows:
        raise DataError("no rows after the header", path)
    return rows


def read_unisrec(folder: Path, name: str | None = None) -> Dataset:
    """Read the UniSRec layout and rebuild every user's full chronological sequence.

    The full sequence is the first training history, then the targets of the training rows in order
    of growing history, then the valid and test targets: this also recovers histories longer than the
    50 items kept in each row.
    """
    folder = Path(folder)
    prefix = _unisrec_prefix(folder)
    item_ids = _read_index(folder / f"{prefix}.item2index")
    user_ids = _read_index(folder / f"{prefix}.user2index")
    n_users, n_items = len(user_ids), len(item_ids)
    split_rows = {s: read_unisrec_split(folder / f"{prefix}.{s}.inter", n_users, n_items) for s in ("train", "valid", "test")}

    # The files list each user's training rows newest first; histories stop growing at 50 items, so
    # the order is (history length, reversed file position).
    train_rows: list[list[tuple[int, int, list[int], int]]] = [[] for _ in range(n_users)]
    for position, (user, history, target) in enumerate(split_rows["train"]):
        train_rows[user].append((len(history), -position, history, target))
    last: dict[str, dict[int, tuple[list[int], int]]] = {"valid": {}, "test": {}}
    for split in ("valid", "test"):
        path = folder / f"{prefix}.{split}.inter"
        for user, history, target in split_rows[split]:
            if user in last[split]:
                raise DataError(f"user {user} has two {split} rows", path)
            last[split][user] = (history, target)
    sequences = []
    for user in range(n_users):
        if user not in last["valid"] or user not in last["test"]:
            raise DataError(f"user {user} ({user_ids[user]}) has no valid or test row", folder)
        rows = [(h, t) for *_, h, t in sorted(train_rows[user], key=lambda r: r[:2])]
        valid_hist, valid_target = last["valid"][user]
        test_hist, test_target = last["test"][user]
        if rows:
            seq = list(rows[0][0]) + [target for _, target in rows] + [valid_target, test_target]
        else:
            seq = list(valid_hist) + [valid_target, test_target]
        if seq[:-1][-len(test_hist):] != test_hist or seq[:-2][-len(valid_hist):] != valid_hist:
            raise DataError(
                f"user {user} ({user_ids[user]}): the train, valid and test rows do not chain into one sequence",
                folder,
            )
        sequences.append(seq)

    text = _read_unisrec_text(folder / f"{prefix}.text", item_ids)
    extras = {}
    for suffix, key in ((".feat1CLS", "text_vectors"), (".feat3CLS", "image_vectors")):
        if (folder / f"{prefix}{suffix}").is_file():
            extras[key] = folder / f"{prefix}{suffix}"
    return Dataset(
        name=name or folder.name,
        items=ItemCatalogue(np.array(item_ids, dtype=object), text=text),
        user_ids=np.array(user_ids, dtype=object),
        sequences=Sequences.from_lists(sequences),
        source=folder,
        extras=extras,
    )


def _read_unisrec_text(path: Path, item_ids: list[str]) -> list[str] | None:
    if not path.is_file():
        return None
    index = {item: i for i, item in enumerate(item_ids)}
    text = [""] * len(item_ids)
    lines = _lines(path)
    header = next(lines, None)
    if header is None or not header[1].startswith("item_id:token"):
        raise DataError("expected the header 'item_id:token<TAB>text:token_seq'", path, 1)
    for number, line in lines:
        if not line.strip():
            continue
        item, _, value = line.partition("\t")
        if item in index:  # text of items outside the catalogue is ignored
            text[index[item]] = value.strip()
    return text


# --------------------------------------------------------------------------- S3-Rec layout


def read_s3rec(path: Path, name: str | None = None) -> Dataset:
    """``user item item ...`` lines, items in chronological order (the split is leave-one-out)."""
    path = Path(path)
    users, seqs = [], []
    for number, line in _lines(path):
        if not line.strip():
            continue
        tokens = line.split()
        if len(tokens) < 2:
            raise DataError("expected 'user item [item ...]'", path, number)
        users.append(tokens[0])
        seqs.append([_int(t, path, number, "item id") for t in tokens[1:]])
    if not users:
        raise DataError("empty file: expected 'user item item ...' lines", path)
    if len(set(users)) != len(users):
        raise DataError("a user appears on more than one line", path)
    all_items = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])
    unique = np.unique(all_items)
    lengths = np.fromiter(map(len, seqs), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return Dataset(
        name=name or path.parent.name,
        items=ItemCatalogue(np.array([str(i) for i in unique], dtype=object)),
        user_ids=np.array(users, dtype=object),
        sequences=Sequences(offsets, np.searchsorted(unique, all_items)),
        source=path,
    )


# --------------------------------------------------------------------------- raw interaction logs


def _seconds(times: pd.Series) -> pd.Series:
    """Seconds since 1970-01-01 UTC of datetimes (naive ones are taken as UTC); NaT -> NaN."""
    if times.dt.tz is None:
        times = times.dt.tz_localize("UTC")
    return (times - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(1, "s")


def timestamps(column: pd.Series, path: Path | None = None, lines: Sequence[int] | None = None,
               what: str = "column 'timestamp'") -> pd.Series:
    """Timestamps as sortable numbers: numbers stay as they are; ISO dates and datetimes (strings such
    as ``2015-06-23`` or ``2015-06-23T14:05:00+02:00``, or a datetime column) become seconds since
    1970-01-01 UTC, a time without a zone read as UTC; empty values stay NaN. A value that is neither a
    number nor a date is a DataError naming ``path`` and the value's line (``lines[row]``; without
    ``lines``, its row counted from 1)."""
    if pd.api.types.is_numeric_dtype(column):
        return column
    if pd.api.types.is_datetime64_any_dtype(column):
        return _seconds(column)
    present = column.notna()
    text = column.astype(str).str.strip().where(present, "")
    numbers = pd.to_numeric(text.where(text.ne(""), None), errors="coerce")
    rest = numbers.isna() & text.ne("")
    if not rest.any():
        return numbers
    dates = pd.to_datetime(text.where(rest, None), format="ISO8601", errors="coerce", utc=True)
    bad = rest & dates.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        where = "" if lines is not None else f"row {row + 1}: "
        raise DataError(f"{where}{what} value {text.iloc[row]!r} is neither a number nor an ISO date or datetime "
                        "(such as 2015-06-23 or 2015-06-23T14:05:00)", path, None if lines is None else lines[row])
    return numbers.where(~rest, _seconds(dates))


def from_interactions(
    interactions: pd.DataFrame,
    name: str,
    items: pd.DataFrame | None = None,
    user_core: int = 5,
    item_core: int = 0,
    text_fields: list[str] | None = None,
    image_field: str | None = None,
    source: Path | None = None,
    image_root: Path | None = None,
) -> Dataset:
    """Build a Dataset from a log with columns ``user_id``, ``item_id`` and optionally ``timestamp``.

    Duplicate user-item pairs keep their last occurrence; users with fewer than ``user_core`` and items
    with fewer than ``item_core`` interactions are removed until both hold (k-core); ties in time are
    broken by the order of the log, so the result is deterministic. ``timestamp``: numbers, ISO dates
    or datetimes (see ``timestamps``).
    """
    interactions = interactions.dropna(subset=["user_id", "item_id"])
    df = pd.DataFrame({c: _id_text(interactions[c]) for c in ("user_id", "item_id")})
    df["timestamp"] = timestamps(interactions["timestamp"], source).to_numpy() if "timestamp" in interactions else 0
    df["order"] = np.arange(len(df))
    df = df.sort_values(["timestamp", "order"], kind="stable")
    df = df.drop_duplicates(["user_id", "item_id"], keep="last")
    while True:
        before = len(df)
        if user_core > 1:
            df = df[df.groupby("user_id")["item_id"].transform("size") >= user_core]
        if item_core > 1:
            df = df[df.groupby("item_id")["user_id"].transform("size") >= item_core]
        if len(df) == before:
            break
    if df.empty:
        raise DataError(f"no interactions left after the {user_core}-core filter", source)
    item_codes, item_ids = pd.factorize(df["item_id"], sort=True)
    df = df.assign(item=item_codes).sort_values(["user_id", "timestamp", "order"], kind="stable")
    user_ids, counts = np.unique(df["user_id"].to_numpy(), return_counts=True)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    catalogue = _catalogue(np.asarray(item_ids, dtype=object), items, text_fields, image_field, image_root)
    items = np.array(df["item"], dtype=np.int64)  # a copy: pandas' own arrays are read-only (copy on write)
    return Dataset(name, catalogue, user_ids.astype(object), Sequences(offsets, items), source=source)


def _id_text(column: pd.Series) -> pd.Series:
    """Ids as text. A numeric id column with an empty cell is read as floats; its ids lose the ``.0``
    (``1370``, not ``1370.0``), so that they match the ids users and item tables give."""
    if pd.api.types.is_float_dtype(column):
        known = column.dropna()
        if known.size and bool((known == np.floor(known)).all()):
            return column.astype("Int64").astype(str).where(column.notna())
    return column.astype(str)


def _is_text(column: pd.Series) -> bool:
    return column.dtype == object or pd.api.types.is_string_dtype(column)


def _catalogue(
    item_ids: np.ndarray,
    items: pd.DataFrame | None,
    text_fields: list[str] | None,
    image_field: str | None,
    image_root: Path | None,
) -> ItemCatalogue:
    if items is None:
        return ItemCatalogue(item_ids)
    table = items.dropna(subset=["item_id"]).assign(item_id=lambda t: _id_text(t["item_id"]))
    table = table.drop_duplicates("item_id", keep="last").set_index("item_id")
    table = table.reindex(item_ids)
    if text_fields is None:
        text_fields = [c for c in table.columns if c != image_field and _is_text(table[c])]
    fields = {f: table[f].fillna("").astype(str).str.strip().tolist() for f in text_fields if f in table}
    text = [". ".join(v for v in vals if v) for vals in zip(*fields.values())] if fields else None
    images = None
    if image_field and image_field in table:
        root = image_root or Path(".")
        images = [None if pd.isna(p) or not str(p) else str(root / str(p)) for p in table[image_field]]
    return ItemCatalogue(item_ids, text=text, fields=fields, image_paths=images)


# --------------------------------------------------------------------------- RecBole atomic files


def _atomic_table(path: Path, sep: str) -> pd.DataFrame:
    """A RecBole atomic file: header of ``name:type`` fields; returns columns named without types.
    ``float`` fields become numbers, and the ``timestamp`` field, whatever its type, numbers or dates."""
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError("empty file: expected a header of 'name:type' fields", path)
    header = first[1].split(sep)
    names = []
    for field in header:
        name, colon, kind = field.partition(":")
        if not colon or kind not in {"token", "token_seq", "float", "float_seq"}:
            raise DataError(f"header field {field!r} is not 'name:type' with type token, token_seq, float or float_seq", path, 1)
        if name in names:
            raise DataError(f"header field {name!r} appears twice", path, 1)
        names.append(name)
    rows, numbers = [], []
    for number, line in lines:
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != len(names):
            raise DataError(f"expected {len(names)} fields ({', '.join(names)}), found {len(parts)}", path, number)
        rows.append(parts)
        numbers.append(number)
    df = pd.DataFrame(rows, columns=names, dtype=object)
    for name, field in zip(names, header):
        if name == "timestamp":  # files declare it float or token, and hold numbers or ISO dates
            df[name] = timestamps(df[name], path, numbers, what=f"field {name!r}")
        elif field.endswith(":float"):
            converted = pd.to_numeric(df[name], errors="coerce")
            bad = converted.isna() & df[name].astype(str).str.strip().ne("")
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(f"field {name!r} value {df[name].iloc[row]!r} is not a number", path, numbers[row])
            df[name] = converted
    return df


def read_atomic(folder: Path, name: str | None = None, sep: str = "\t", user_core: int = 5, item_core: int = 0,
                user_col: str = "user_id", item_col: str = "item_id", time_col: str | None = "timestamp",
                text_fields: list[str] | None = None) -> Dataset:
    """``<name>.inter`` (and ``<name>.item``) with the given field names; ``text_fields``: the item
    fields joined into the item text (default every text field)."""
    folder = Path(folder)
    inters = sorted(p for p in folder.glob("*.inter") if p.name.count(".") == 1)
    if len(inters) != 1:
        raise DataError(f"expected exactly one '<name>.inter' atomic file, found {[p.name for p in inters]}", folder)
    inter = inters[0]
    df = _atomic_table(inter, sep)
    for col in (user_col, item_col):
        if col not in df:
            raise DataError(f"the header has no '{col}:token' field{_COLUMN_HINT}", inter, 1)
    if len(df) == 0:
        raise DataError("no interactions after the header", inter)
    df = df.rename(columns={user_col: "user_id", item_col: "item_id", **({time_col: "timestamp"} if time_col else {})})
    item_file = inter.with_suffix(".item")
    items = _atomic_table(item_file, sep) if item_file.is_file() else None
    if items is not None and item_col not in items:
        raise DataError(f"the header has no '{item_col}:token' field{_COLUMN_HINT}", item_file, 1)
    if items is not None:
        items = items.rename(columns={item_col: "item_id"})
        if text_fields is None:
            text_fields = [c for c in items.columns if c != "item_id" and _is_text(items[c])]
    return from_interactions(df, name or folder.name, items, user_core, item_core, text_fields, source=inter)


# --------------------------------------------------------------------------- CSV / Parquet tables


_COLUMN_HINT = " (other names: --set data.columns.user=NAME, .item, .time; see docs/own-data.md)"


def read_frame(path: Path, ids: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV or Parquet table; the CSV columns ``ids`` are read as text, so that ``000492`` keeps its zeros."""
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype={c: str for c in ids})
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(f"cannot read the table: {e}", path) from None


def read_table(
    path: Path,
    name: str | None = None,
    items_path: Path | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = "timestamp",
    user_core: int = 5,
    item_core: int = 0,
    text_fields: list[str] | None = None,
    image_field: str | None = "image",
) -> Dataset:
    """A CSV or Parquet log of (user, item, timestamp) and an optional item table keyed by item id."""
    path = Path(path)
    df = read_frame(path, ids=(user_col, item_col))
    if df.empty:
        raise DataError("empty table: expected (user, item, timestamp) rows", path)
    missing = [c for c in (user_col, item_col) if c not in df]
    if missing:
        raise DataError(f"missing column(s) {missing}; columns are {list(df.columns)}{_COLUMN_HINT}", path)
    log = pd.DataFrame({"user_id": df[user_col], "item_id": df[item_col]})
    if time_col and time_col in df:
        lines = None if path.suffix == ".parquet" else range(2, len(df) + 2)  # CSV: the header is line 1
        log["timestamp"] = timestamps(df[time_col], path, lines, what=f"column {time_col!r}")
    items = None
    if items_path is not None:
        items = read_frame(Path(items_path), ids=(item_col,))
        if item_col not in items:
            raise DataError(f"the item table has no {item_col!r} column{_COLUMN_HINT}", items_path)
        items = items.rename(columns={item_col: "item_id"})
    return from_interactions(
        log, name or path.parent.name, items, user_core, item_core, text_fields, image_field, path,
        image_root=None if items_path is None else Path(items_path).parent,
    )


# --------------------------------------------------------------------------- MMSRec layout

MMSREC_SEQUENCES = "test_seq.jsonl"
MMSREC_ITEMS = "item.jsonl"
MMSREC_ITEM_VECTORS = "item_feature.jsonl"
# where each kind of file named in the item files lies: only the file name of a written path counts
MMSREC_FOLDERS = {"texts": "texts", "visions": "visions", "text_vectors": "text_features", "image_vectors": "vision_features"}


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON ({e.msg} at column {e.colno})", path, number) from None


def _mmsrec_items(path: Path) -> dict[str, dict[str, Any]]:
    """id -> the JSON object of each item of ``item.jsonl`` / ``item_feature.jsonl``, in file order."""
    items: dict[str, dict[str, Any]] = {}
    for number, record in _json_lines(path):
        if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not record["id"]:
            raise DataError('expected an object {"id": ..., "text": path, "vision": path or null}', path, number)
        for key in ("text", "vision"):
            if record.get(key) is not None and not isinstance(record[key], str):
                raise DataError(f"field {key!r} of item {record['id']!r} is not a path or null", path, number)
        if record["id"] in items:
            raise DataError(f"item {record['id']!r} appears twice", path, number)
        items[record["id"]] = record
    if not items:
        raise DataError("empty file: expected one JSON object per item", path)
    return items


def _named_file(folder: Path, written: str | None) -> Path | None:
    """The file a path written by the producing machine names, inside ``folder``; None if absent."""
    if not written:
        return None
    found = folder / Path(written.replace("\\", "/")).name
    return found if found.is_file() else None


_MMSREC_LABEL = re.compile(r"(?:^|\s;\s*)([A-Z][A-Za-z]*):\s")
MMSREC_ID_LABELS = {"asin"}  # an id standing in for a missing title: not content


def parse_mmsrec_text(text: str) -> dict[str, str]:
    """'Title: ... ; Description: ... ; ' -> {'title': ..., 'description': ...}, HTML entities decoded; a
    ';' inside a value stays in it. A text without labels is one 'text' field; an 'Asin:' label is dropped."""
    marks = list(_MMSREC_LABEL.finditer(text))
    if not marks:
        return {"text": html.unescape(text.strip(" ;\n"))} if text.strip(" ;\n") else {}
    fields: dict[str, str] = {}
    for mark, after in zip(marks, [*marks[1:], None]):
        key = mark.group(1).lower()
        value = html.unescape(text[mark.end() : after.start() if after else len(text)].strip().rstrip(";").strip())
        if value and key not in MMSREC_ID_LABELS:
            fields[key] = f"{fields[key]} {value}" if key in fields else value
    return fields


def read_mmsrec(folder: Path, name: str | None = None) -> Dataset:
    """The MMSRec layout: one JSON array of item ids per line of ``test_seq.jsonl`` (a user's whole
    sequence, oldest first; users are named by their line number), the items in ``item.jsonl`` order
    with their texts (``texts/``) and photos (``visions/``), and the per-item vector files of
    ``item_feature.jsonl`` (``text_features/``, ``vision_features/``) as shipped vectors."""
    folder = Path(folder)
    listing = _mmsrec_items(folder / MMSREC_ITEMS)
    item_ids = list(listing)
    index = {item: i for i, item in enumerate(item_ids)}
    users, sequences = [], []
    path = folder / MMSREC_SEQUENCES
    for number, seq in _json_lines(path):
        if not isinstance(seq, list) or not seq or not all(isinstance(i, str) for i in seq):
            raise DataError("expected a non-empty JSON array of item ids", path, number)
        unknown = [i for i in seq if i not in index]
        if unknown:
            raise DataError(f"item id(s) {unknown[:3]} are not in {MMSREC_ITEMS}", path, number)
        users.append(str(number))
        sequences.append([index[i] for i in seq])
    if not users:
        raise DataError("empty file: expected one JSON array of item ids per user", path)

    texts_dir, photos_dir = folder / MMSREC_FOLDERS["texts"], folder / MMSREC_FOLDERS["visions"]
    parsed = []
    for item in item_ids:
        text_file = _named_file(texts_dir, listing[item].get("text"))
        parsed.append(parse_mmsrec_text(text_file.read_text(encoding="utf-8", errors="replace")) if text_file else {})
    names = list(dict.fromkeys(key for fields in parsed for key in fields))
    fields = {key: [p.get(key, "") for p in parsed] for key in names}
    text = [". ".join(v for v in (p.get(key, "") for key in names) if v) for p in parsed]
    photos = [_named_file(photos_dir, listing[item].get("vision")) for item in item_ids]

    extras: dict[str, Path | VectorFiles] = {}
    vectors_listing = folder / MMSREC_ITEM_VECTORS
    if vectors_listing.is_file():
        named = _mmsrec_items(vectors_listing)
        for key, field_name in (("text_vectors", "text"), ("image_vectors", "vision")):
            vectors_dir = folder / MMSREC_FOLDERS[key]
            files = {item: vectors_dir / Path(str(r[field_name]).replace("\\", "/")).name
                     for item, r in named.items() if item in index and r.get(field_name)}
            if files:
                extras[key] = VectorFiles(files, vectors_listing)
    return Dataset(
        name=name or folder.name,
        items=ItemCatalogue(np.array(item_ids, dtype=object), text=text, fields=fields,
                            image_paths=[str(p) if p else None for p in photos]),
        user_ids=np.array(users, dtype=object),
        sequences=Sequences.from_lists(sequences),
        source=folder,
        extras=extras,
    )
