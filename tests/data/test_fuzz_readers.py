"""Fuzzing the readers: random, truncated and mangled files of every supported format (UniSRec layout,
S3-Rec .txt, RecBole atomic .inter/.item, CSV tables) either load or raise an mp4sr error; a DataError
names the file (or the dataset folder), and the line it gives exists. Run with -s to see the counts."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mp4sr.data import load_dataset
from mp4sr.data.readers import read_atomic, read_s3rec, read_table, read_unisrec
from mp4sr.errors import DataError, MP4SRError

EXAMPLES = 200
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
NARROW = settings(FUZZ, max_examples=100)  # properties of one line: a smaller space

HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
UNISREC = {
    "X.item2index": "".join(f"I{i}\t{i}\n" for i in range(6)),
    "X.user2index": "U0\t0\nU1\t1\n",
    "X.train.inter": HEADER + "0\t0 1\t2\n0\t0\t1\n1\t3\t4\n",
    "X.valid.inter": HEADER + "0\t0 1 2\t3\n1\t3 4\t5\n",
    "X.test.inter": HEADER + "0\t0 1 2 3\t4\n1\t3 4 5\t0\n",
    "X.text": "item_id:token\ttext:token_seq\nI0\tred pen\nI1\tblue ink\n",
}
S3REC = {"x.txt": "u1 1 2 3 4\nu2 2 3 5\nu3 5 1 2 3\n"}
ATOMIC = {
    "toy.inter": "user_id:token\titem_id:token\ttimestamp:float\n"
                 + "".join(f"u{u}\ti{(u * 3 + k) % 7}\t{k * 10 + u}\n" for u in range(4) for k in range(5)),
    "toy.item": "item_id:token\ttitle:token_seq\tprice:float\ni1\tpen\t1.5\ni2\tink\t2\n",
}
TABLE = {
    "interactions.csv": "user_id,item_id,timestamp\n"
                        + "".join(f"u{u},i{(u * 3 + k) % 7},{k * 10 + u}\n" for u in range(4) for k in range(5)),
    "items.csv": "item_id,title,image\ni1,pen,p.jpg\ni2,ink,\n",
}
LAYOUTS = {"unisrec": UNISREC, "s3rec": S3REC, "atomic": ATOMIC, "table": TABLE}

# Tokens that have broken parsers: huge, negative, non-ASCII digits, floats, separators, bytes that are not UTF-8
NASTY = [b"-1", b"99999999999999999999999999", str(2**63).encode(), str(2**62).encode(), b"1e3", b"nan", b"inf", b"",
         b" ", b"\t", b"\t\t", b"0x10", "\u0661".encode(), b"1_0", b"+1", b"0", b"\xff\xfe", b"\xc3", b"\x00", b"\r",
         b"\n", b",", b'"', b'"a,b"', b"None", b"user_id:token", b"item_id:float", b"a:b:c", "\u00e9".encode()]

# Header fields: known names with every type (and none), so that headers get duplicated or mistyped fields
HEADER_FIELDS = [f"{name}{kind}".encode() for name in ("user_id", "item_id", "timestamp", "title", "item_id_list")
                 for kind in (":token", ":float", ":token_seq", ":float_seq", ":int", "")]

COUNTS: Counter = Counter()


def mutate(content: bytes, data) -> bytes:
    """One random damage: truncate, random bytes, inserted bytes, a token replaced, a line removed or repeated."""
    kind = data.draw(st.sampled_from(["truncate", "random", "insert", "token", "header", "drop_line", "dup_line", "none"]))
    COUNTS[f"mutation:{kind}"] += 1
    if kind == "truncate":
        return content[: data.draw(st.integers(0, len(content)))]
    if kind == "random":
        return data.draw(st.binary(max_size=300))
    if kind == "insert":
        at = data.draw(st.integers(0, len(content)))
        return content[:at] + data.draw(st.one_of(st.binary(min_size=1, max_size=8), st.sampled_from(NASTY))) + content[at:]
    lines = content.split(b"\n")
    if kind in ("token", "header"):
        i = 0 if kind == "header" else data.draw(st.integers(0, max(len(lines) - 1, 0)))
        tokens = lines[i].replace(b",", b"\t").split(b"\t") if lines[i] else [b""]
        j = data.draw(st.integers(0, len(tokens) - 1))
        pool = HEADER_FIELDS if kind == "header" else NASTY
        tokens[j] = data.draw(st.one_of(st.sampled_from(pool), st.text(max_size=6).map(str.encode)))
        lines[i] = (b"," if b"," in lines[i] else b"\t").join(tokens)
    elif kind in ("drop_line", "dup_line") and lines:
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i:i + 1] = [] if kind == "drop_line" else [lines[i], lines[i]]
    return b"\n".join(lines)


def check(call, folder: Path, what: str):
    """Call a reader: it returns a sane Dataset or raises an MP4SRError that names a file (anything else fails)."""
    try:
        ds = call()
    except DataError as e:
        COUNTS[f"{what}:DataError"] += 1
        assert folder.name in str(e), f"the message does not name the file: {e}"
        if e.line is not None:
            assert e.path and Path(e.path).is_file() and f"line {e.line}" in str(e)
            n_lines = Path(e.path).read_bytes().count(b"\n") + 1
            assert 1 <= e.line <= n_lines, f"line {e.line} of a file of {n_lines} lines: {e}"
        return None
    except MP4SRError:
        COUNTS[f"{what}:other MP4SRError"] += 1
        return None
    COUNTS[f"{what}:loaded"] += 1
    assert ds.n_items > 0 and len(ds.user_ids) == len(ds.sequences)
    items = ds.sequences.items
    assert len(items) == 0 or (items.min() >= 0 and items.max() < ds.n_items)
    return ds


def write_layout(folder: Path, files: dict[str, str], data) -> None:
    """The layout's files, one or two of them damaged."""
    names = sorted(files)
    damaged = set(data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=2)))
    for name in names:
        content = files[name].encode()
        (folder / name).write_bytes(mutate(content, data) if name in damaged else content)


def reader_for(layout: str, folder: Path):
    return {
        "unisrec": lambda: read_unisrec(folder),
        "s3rec": lambda: read_s3rec(folder / "x.txt"),
        "atomic": lambda: read_atomic(folder, user_core=2),
        "table": lambda: read_table(folder / "interactions.csv", items_path=folder / "items.csv", user_core=2),
    }[layout]


def fuzz_layout(layout: str):
    @FUZZ
    @given(data=st.data())
    def run(data):
        folder = Path(tempfile.mkdtemp(prefix=f"fuzz-{layout}-"))
        try:
            write_layout(folder, LAYOUTS[layout], data)
            check(reader_for(layout, folder), folder, layout)
        finally:
            shutil.rmtree(folder)

    run()


def report(prefix: str) -> None:
    """Print how many inputs each reader was given and what came of them (see them with pytest -s)."""
    groups: dict[str, dict[str, int]] = {}
    for key, n in sorted(COUNTS.items()):
        group, _, result = key.rpartition(":")
        if group.startswith(prefix):
            groups.setdefault(group, {})[result] = n
    for group, results in groups.items():
        print(f"\n{group}: {sum(results.values())} inputs tried; {results}")


def test_fuzz_unisrec_layout():
    fuzz_layout("unisrec")
    report("unisrec")


def test_fuzz_s3rec_txt():
    fuzz_layout("s3rec")
    report("s3rec")


def test_fuzz_atomic_files():
    fuzz_layout("atomic")
    report("atomic")


def test_fuzz_csv_tables():
    fuzz_layout("table")
    report("table")


@FUZZ
@given(content=st.binary(max_size=400), name=st.sampled_from(["x.txt", "interactions.csv", "toy.inter"]))
def _fuzz_random_bytes(content, name):
    folder = Path(tempfile.mkdtemp(prefix="fuzz-bytes-"))
    try:
        (folder / name).write_bytes(content)
        check(lambda: load_dataset(folder), folder, "random bytes")
    finally:
        shutil.rmtree(folder)


def test_fuzz_random_bytes_in_any_format():
    _fuzz_random_bytes()
    report("random bytes")


@NARROW
@given(
    file=st.sampled_from(["X.train.inter", "X.valid.inter", "X.test.inter"]),
    row=st.integers(0, 1),
    field=st.integers(0, 2),
    bad=st.one_of(st.sampled_from([b"x", b"1.5", b"-3", b"99999999999999999999", b"\xff", b"1e9", b"0x1"]),
                  st.text(st.characters(whitelist_categories=["Ll", "Lu", "P"], blacklist_characters="\t\n\r"), min_size=1, max_size=5).map(str.encode)),
)
def _fuzz_bad_token_line(file, row, field, bad):
    """A bad id on line k of a UniSRec .inter file is reported at line k of that file."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-line-"))
    try:
        for name, content in UNISREC.items():
            (folder / name).write_text(content)
        lines = UNISREC[file].encode().split(b"\n")
        tokens = lines[1 + row].split(b"\t")
        tokens[field] = bad
        lines[1 + row] = b"\t".join(tokens)
        (folder / file).write_bytes(b"\n".join(lines))
        try:
            read_unisrec(folder)
        except DataError as e:
            COUNTS["bad token:DataError"] += 1
            assert e.path == str(folder / file) and e.line == 2 + row, str(e)
        else:
            raise AssertionError(f"{bad!r} was accepted as an id")
    finally:
        shutil.rmtree(folder)


def test_fuzz_a_bad_id_is_reported_at_its_line():
    _fuzz_bad_token_line()
    report("bad token")


@NARROW
@given(blank=st.lists(st.integers(1, 21), max_size=6), row=st.integers(0, 19),
       bad=st.sampled_from(["soon", "1,5", "nan", "--1", "1e", "\u0661\u0662.x"]))
def _fuzz_atomic_bad_float_line(blank, row, bad):
    """A value that is not a number in a float field is reported at its line, blank lines included."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-float-"))
    try:
        header, *rows = ATOMIC["toy.inter"].splitlines()
        user, item, _ = rows[row].split("\t")
        rows[row] = f"{user}\t{item}\t{bad}"
        lines = [header, *rows]
        for at in sorted(blank, reverse=True):
            lines.insert(at, "")
        (folder / "toy.inter").write_text("\n".join(lines) + "\n")
        try:
            read_atomic(folder, user_core=2)
        except DataError as e:
            COUNTS["bad float:DataError"] += 1
            assert e.line == lines.index(rows[row]) + 1, str(e)
        else:
            raise AssertionError(f"{bad!r} was accepted as a number")
    finally:
        shutil.rmtree(folder)


def test_fuzz_a_bad_number_is_reported_at_its_line():
    _fuzz_atomic_bad_float_line()
    report("bad float")


ZONES = st.sampled_from([None, timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
STAMPS = st.datetimes(datetime(1995, 1, 1), datetime(2030, 1, 1), timezones=ZONES).map(lambda t: t.replace(microsecond=0))
WRITTEN = {  # how a file may write a time, and the seconds since 1970 (UTC) that the text stands for
    "iso": (datetime.isoformat, lambda t: t),
    "space": (lambda t: t.isoformat(sep=" "), lambda t: t),
    "date": (lambda t: t.date().isoformat(), lambda t: datetime.combine(t.date(), datetime.min.time())),
    "seconds": (lambda t: repr(_utc(t).timestamp()), lambda t: t),
}


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


@NARROW
@given(rows=st.lists(st.tuples(STAMPS, st.sampled_from(sorted(WRITTEN))), min_size=2, max_size=12),
       layout=st.sampled_from(["atomic", "table"]), bad=st.none() | st.tuples(st.integers(0, 11), st.sampled_from(
           ["soon", "2015-02-30", "23/06/2015", "2015-06-23T25:00", "1.5.6", "--1"])))
def _fuzz_date_timestamps(rows, layout, bad):
    """Times written as numbers, ISO dates and datetimes (with a zone or without: UTC), mixed in one
    file, order a sequence as the times they stand for; a value that is neither is reported at its line."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-dates-"))
    try:
        written = [WRITTEN[style][0](t) for t, style in rows]
        seconds = [_utc(WRITTEN[style][1](t)).timestamp() for t, style in rows]
        if bad is not None:
            written[bad[0] % len(rows)] = bad[1]
        sep, name = ("\t", "x.inter") if layout == "atomic" else (",", "interactions.csv")
        header = "user_id:token\titem_id:token\ttimestamp:float" if layout == "atomic" else "user_id,item_id,timestamp"
        lines = [header] + [sep.join(["u", f"i{n}", w]) for n, w in enumerate(written)]
        (folder / name).write_text("\n".join(lines) + "\n")
        read = (lambda: read_atomic(folder, user_core=2)) if layout == "atomic" else (
            lambda: read_table(folder / name, user_core=2))
        try:
            ds = read()
        except DataError as e:
            COUNTS["dates:DataError"] += 1
            assert bad is not None, str(e)
            assert e.path == str(folder / name) and e.line == 2 + bad[0] % len(rows), str(e)
            return
        COUNTS["dates:loaded"] += 1
        assert bad is None, f"{bad[1]!r} was accepted as a time"
        expected = [f"i{n}" for n in sorted(range(len(rows)), key=lambda n: (seconds[n], n))]
        assert [ds.items.ids[i] for i in ds.sequences[0]] == expected
    finally:
        shutil.rmtree(folder)


def test_fuzz_date_timestamps_order_as_the_times_they_stand_for():
    _fuzz_date_timestamps()
    report("dates")


def test_counts_cover_both_outcomes():
    """The fuzzing reached both loading and refusing (else the mutations are too weak or too strong)."""
    outcomes = Counter(k.rsplit(":", 1)[1] for k in COUNTS if ":" in k and not k.startswith("mutation"))
    if COUNTS:  # when run alone this test has nothing to check
        assert outcomes["loaded"] and outcomes["DataError"]
