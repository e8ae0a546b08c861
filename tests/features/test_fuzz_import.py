"""Fuzzing the import of precomputed vectors: raw float32 ``.feat`` files of any size (NaN, inf, huge
values), ``.npy`` files of any shape and dtype, truncated or damaged, and item index files with bad
bytes either import or raise an mp4sr error that names the file. Run with -s to see the counts."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mp4sr.errors import DataError, MP4SRError
from mp4sr.features import import_vectors, read_item_ids, read_vectors

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
COUNTS: Counter = Counter()

MODERATE = st.floats(-1e3, 1e3, width=32)
FLOATS = st.one_of(MODERATE, MODERATE, MODERATE, st.floats(width=32, allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, 1.0, -1.0, 7e4, 1e30, float("nan")]))  # 7e4, 1e30: beyond float16
DIMS = st.one_of(st.none(), st.integers(-2, 6))
DTYPES = ["<f4", ">f4", "<f8", "<f2", "<i4", "|u1", "|b1", "<c8", "|O", "<U3", "<M8[s]", "[('a', '<f4')]"]


def outcome(what: str, call, file: Path):
    """Run ``call``: a result, or an mp4sr error that names ``file`` if it is a DataError; nothing else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", np.exceptions.ComplexWarning)  # a silently dropped imaginary part is a bug
            result = call()
    except DataError as e:
        COUNTS[f"{what}:DataError"] += 1
        assert file.name in str(e), f"the message does not name {file.name}: {e}"
        return None
    except MP4SRError:
        COUNTS[f"{what}:other MP4SRError"] += 1
        return None
    COUNTS[f"{what}:ok"] += 1
    return result


def check_store(store, n_targets: int) -> None:
    vectors = np.asarray(store.vectors, dtype=np.float32)
    assert vectors.shape[:2] == (n_targets, 1) and np.isfinite(vectors).all()


def report(prefix: str) -> None:
    """Print how many inputs each reader was given and what came of them (see them with pytest -s)."""
    groups: dict[str, dict[str, int]] = {}
    for key, n in sorted(COUNTS.items()):
        group, _, result = key.rpartition(":")
        if group.startswith(prefix):
            groups.setdefault(group, {})[result] = n
    for group, results in groups.items():
        print(f"\n{group}: {sum(results.values())} inputs tried; {results}")


@FUZZ
@given(
    data=st.data(), n_targets=st.integers(1, 6), dim=DIMS, use_index=st.booleans(),
)
def _fuzz_raw(data, n_targets, dim, use_index):
    whole_rows = st.integers(1, 4).flatmap(lambda d: st.lists(FLOATS, min_size=n_targets * d, max_size=n_targets * d))
    floats = st.one_of(whole_rows, whole_rows, st.lists(FLOATS, max_size=40))
    content = data.draw(st.one_of(floats.map(lambda v: np.asarray(v, "<f4").tobytes()), st.binary(max_size=120)))
    folder = Path(tempfile.mkdtemp(prefix="fuzz-feat-"))
    try:
        path = folder / "X.feat1CLS"
        path.write_bytes(content)
        targets = [f"i{k}" for k in range(n_targets)]
        outcome("raw read", lambda: read_vectors(path, n_targets if use_index else None, dim), path)
        store = outcome("raw import", lambda: import_vectors(path, targets, dim=dim, dataset=folder.name), path)
        if store is not None:
            check_store(store, n_targets)
    finally:
        shutil.rmtree(folder)


def test_fuzz_raw_float32_files():
    _fuzz_raw()
    report("raw")


@st.composite
def npy_bytes(draw, rows: int) -> bytes:
    """A .npy file of a random shape and dtype (half the time a float [rows, d] table), maybe truncated or
    with bytes changed."""
    if draw(st.booleans()):
        shape, dtype = (rows, draw(st.integers(1, 4))), np.dtype(draw(st.sampled_from(["<f4", "<f8", "<f2", ">f4"])))
    else:
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        dtype = np.dtype(eval(d) if (d := draw(st.sampled_from(DTYPES))).startswith("[") else d)  # noqa: S307
    size = int(np.prod(shape))
    if dtype.kind in "fc":
        with np.errstate(over="ignore", invalid="ignore"):  # 1e30 becomes inf in float16: a case wanted here
            array = np.asarray(draw(st.lists(FLOATS, min_size=size, max_size=size)), dtype=np.float64).astype(dtype)
    elif dtype.kind == "O":
        array = np.array([None] * size, dtype=object)
    else:
        array = np.zeros(size, dtype=dtype)
    array = array.reshape(shape)
    if draw(st.booleans()) and array.ndim == 2:
        array = np.asfortranarray(array)
    buffer = tempfile.SpooledTemporaryFile()
    np.save(buffer, array, allow_pickle=True)
    buffer.seek(0)
    data = buffer.read()
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "append"]))
    COUNTS[f"npy damage:{damage}"] += 1
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    elif damage == "append":
        data += draw(st.binary(min_size=1, max_size=16))
    return data


@FUZZ
@given(data=st.data(), n_targets=st.integers(1, 6), dim=st.one_of(st.none(), st.none(), DIMS))
def _fuzz_npy(data, n_targets, dim):
    content = data.draw(npy_bytes(n_targets))
    folder = Path(tempfile.mkdtemp(prefix="fuzz-npy-"))
    try:
        path = folder / "vectors.npy"
        path.write_bytes(content)
        targets = [f"i{k}" for k in range(n_targets)]
        outcome("npy read", lambda: read_vectors(path, None, dim), path)
        store = outcome("npy import", lambda: import_vectors(path, targets, dim=dim, dataset=folder.name), path)
        if store is not None:
            check_store(store, n_targets)
    finally:
        shutil.rmtree(folder)


def test_fuzz_npy_files():
    _fuzz_npy()
    report("npy")


@FUZZ
@given(
    index=st.one_of(
        st.binary(max_size=80),
        st.lists(st.tuples(st.sampled_from(["i0", "i1", "i2", "x", "", "\u00e9"]),
                           st.sampled_from(["0", "1", "2", "-1", "x", "99999999999999999999"])),
                 max_size=5).map(lambda rows: "".join(f"{a}\t{b}\n" for a, b in rows).encode()),
        st.lists(st.sampled_from(["i0", "i1", "i2", "i3"]), max_size=5).map(lambda ids: "\n".join(ids).encode()),
    ),
    bad_byte=st.one_of(st.none(), st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\r"])),
    where=st.integers(0, 80),
)
def _fuzz_item_index(index, bad_byte, where):
    folder = Path(tempfile.mkdtemp(prefix="fuzz-index-"))
    try:
        if bad_byte:
            index = index[:where] + bad_byte + index[where:]
        ids = folder / "X.item2index"
        ids.write_bytes(index)
        np.ones((3, 2), "<f4").tofile(folder / "X.feat1CLS")
        outcome("index read", lambda: read_item_ids(ids), ids)
        try:
            store = import_vectors(folder / "X.feat1CLS", ["i0", "i1", "i2"], source_item_ids=ids, dataset=folder.name)
        except DataError as e:
            COUNTS["index import:DataError"] += 1
            assert ids.name in str(e) or "X.feat1CLS" in str(e), str(e)
        except MP4SRError:
            COUNTS["index import:other MP4SRError"] += 1
        else:
            COUNTS["index import:ok"] += 1
            check_store(store, 3)
    finally:
        shutil.rmtree(folder)


def test_fuzz_item_index_files():
    _fuzz_item_index()
    report("index")
