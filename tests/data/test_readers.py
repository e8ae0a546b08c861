"""Readers: each format loads, and bad input fails with an error that names the file and line."""

import numpy as np
import pandas as pd
import pytest

from mp4sr.data import leave_one_out, load_dataset
from mp4sr.data.readers import read_atomic, read_s3rec, read_table, read_unisrec
from mp4sr.errors import DataError

HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"


def test_beauty_ids_loads(shared_data):
    ds = load_dataset(shared_data / "amazon-beauty-ids")
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (22363, 12101, 198502)
    # ids are 1..n, so item index = id - 1 and the first line "1 1 2 3 4 5" maps to 0..4
    assert ds.sequences[0].tolist() == [0, 1, 2, 3, 4]
    assert ds.items.ids[0] == "1"


def _unisrec(tmp_path, train="0\t0 1\t2\n0\t0\t1\n", valid="0\t0 1 2\t3\n", test="0\t0 1 2 3\t4\n", n_items=5):
    (tmp_path / "X.item2index").write_text("".join(f"I{i}\t{i}\n" for i in range(n_items)))
    (tmp_path / "X.user2index").write_text("U0\t0\n")
    (tmp_path / "X.train.inter").write_text(HEADER + train)
    (tmp_path / "X.valid.inter").write_text(HEADER + valid)
    (tmp_path / "X.test.inter").write_text(HEADER + test)
    return tmp_path


def test_small_unisrec_folder(tmp_path):
    ds = read_unisrec(_unisrec(tmp_path))
    assert ds.sequences[0].tolist() == [0, 1, 2, 3, 4]
    assert ds.items.text is None


def test_unisrec_malformed_line(tmp_path):
    with pytest.raises(DataError, match=r"X\.train\.inter, line 3: expected 3 tab-separated fields"):
        read_unisrec(_unisrec(tmp_path, train="0\t0 1\t2\n0 0 1\n"))


def test_unisrec_unknown_item(tmp_path):
    with pytest.raises(DataError, match=r"X\.test\.inter, line 2: unknown item index 9"):
        read_unisrec(_unisrec(tmp_path, test="0\t0 1 2 3\t9\n"))


def test_unisrec_not_an_integer(tmp_path):
    with pytest.raises(DataError, match=r"X\.valid\.inter, line 2: item index 'x'"):
        read_unisrec(_unisrec(tmp_path, valid="0\t0 x 2\t3\n"))


def test_unisrec_wrong_header(tmp_path):
    folder = _unisrec(tmp_path)
    (folder / "X.valid.inter").write_text("user\titems\ttarget\n0\t0 1 2\t3\n")
    with pytest.raises(DataError, match=r"X\.valid\.inter, line 1: wrong header"):
        read_unisrec(folder)


def test_unisrec_empty_file(tmp_path):
    folder = _unisrec(tmp_path)
    (folder / "X.test.inter").write_text("")
    with pytest.raises(DataError, match=r"X\.test\.inter: empty file"):
        read_unisrec(folder)


def test_unisrec_rows_that_do_not_chain(tmp_path):
    with pytest.raises(DataError, match="do not chain"):
        read_unisrec(_unisrec(tmp_path, test="0\t0 1 2 4\t3\n"))


def test_s3rec_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 1 2 3\n2 4 five 6\n")
    with pytest.raises(DataError, match=r"bad\.txt, line 2: item id 'five' is not an integer"):
        read_s3rec(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty file"):
        read_s3rec(empty)


def test_atomic_with_item_text(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    # user a: b, c, then b again (the duplicate keeps its last time), ties broken by file order
    rows += ["a\tb\t1", "a\tc\t2", "a\td\t3", "a\tb\t4", "a\te\t4", "a\tf\t5", "x\tb\t1"]
    (folder / "toy.inter").write_text("\n".join(rows) + "\n")
    (folder / "toy.item").write_text("item_id:token\ttitle:token_seq\nb\tBee\nc\tSea\n")
    ds = read_atomic(folder, user_core=5)
    assert ds.user_ids.tolist() == ["a"]  # x has one interaction
    assert [ds.items.ids[i] for i in ds.sequences[0]] == ["c", "d", "b", "e", "f"]
    assert ds.items.text[list(ds.items.ids).index("b")] == "Bee"
    assert ds.items.text[list(ds.items.ids).index("d")] == ""


def test_atomic_errors(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.inter").write_text("user_id\titem_id\na\tb\n")
    with pytest.raises(DataError, match=r"toy\.inter, line 1: header field 'user_id' is not 'name:type'"):
        read_atomic(folder)
    (folder / "toy.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\na\tb\t1\na\tc\n")
    with pytest.raises(DataError, match=r"toy\.inter, line 3: expected 3 fields"):
        read_atomic(folder)
    (folder / "toy.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\na\tb\tsoon\n")
    with pytest.raises(DataError, match=r"toy\.inter, line 2: field 'timestamp' value 'soon' is neither a number nor an ISO date"):
        read_atomic(folder)
    (folder / "toy.inter").write_bytes(b"user_id:token\titem_id:token\n\xff\xfe\tb\n")
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_atomic(folder)


def test_table_csv_and_parquet(tmp_path):
    rng = np.random.default_rng(0)
    log = pd.DataFrame({
        "user_id": np.repeat([f"u{i}" for i in range(20)], 8),
        "item_id": rng.integers(0, 30, 160).astype(str),
        "timestamp": rng.integers(0, 1000, 160),
    })
    items = pd.DataFrame({"item_id": [str(i) for i in range(30)], "title": [f"item {i}" for i in range(30)]})
    log.to_csv(tmp_path / "interactions.csv", index=False)
    items.to_parquet(tmp_path / "items.parquet")
    ds = load_dataset(tmp_path)
    assert ds.n_users <= 20 and ds.sequences.lengths.min() >= 5
    dedup = log.sort_values("timestamp", kind="stable").drop_duplicates(["user_id", "item_id"], keep="last")
    assert ds.n_interactions == len(dedup[dedup.groupby("user_id")["item_id"].transform("size") >= 5])
    assert all(t.startswith("item ") for t in ds.items.text)
    leave_one_out(ds)  # every remaining user can be split
    log.to_parquet(tmp_path / "log.parquet")
    assert read_table(tmp_path / "log.parquet").n_interactions == ds.n_interactions


def test_table_ids_stay_as_written(tmp_path):
    """Zero-padded ids keep their zeros, and numeric ids in a column with an empty cell (read as floats)
    do not gain a '.0': the ids a user gives back and the item table's ids must match the dataset's."""
    users = np.repeat([f"{u:03d}" for u in range(4)], 5)
    items = [f"{i:06d}" for i in (1, 2, 3, 4, 5)] * 4
    (tmp_path / "padded").mkdir()
    pd.DataFrame({"user_id": users, "item_id": items}).to_csv(tmp_path / "padded/interactions.csv", index=False)
    pd.DataFrame({"item_id": sorted(set(items)), "title": ["a", "b", "c", "d", "e"]}).to_csv(
        tmp_path / "padded/items.csv", index=False)
    ds = load_dataset(tmp_path / "padded")
    assert list(ds.items.ids) == ["000001", "000002", "000003", "000004", "000005"]
    assert list(ds.user_ids) == ["000", "001", "002", "003"]
    assert ds.items.text == ["a", "b", "c", "d", "e"]

    (tmp_path / "gaps").mkdir()
    log = "user_id,item_id\n" + "".join(f"{u},{1370 + i}\n" for u in range(3) for i in range(5)) + "7,\n"
    (tmp_path / "gaps/interactions.csv").write_text(log)
    pd.DataFrame({"item_id": [1370 + i for i in range(5)], "title": list("vwxyz")}).to_parquet(
        tmp_path / "gaps/items.parquet")
    ds = load_dataset(tmp_path / "gaps")
    assert list(ds.items.ids) == ["1370", "1371", "1372", "1373", "1374"]
    assert ds.items.text == list("vwxyz")
    floats = pd.DataFrame({"user_id": [1.0] * 5 + [np.nan], "item_id": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    floats.to_parquet(tmp_path / "floats.parquet")
    ds = read_table(tmp_path / "floats.parquet")
    assert list(ds.items.ids) == ["1", "2", "3", "4", "5"] and list(ds.user_ids) == ["1"]


def test_table_missing_column(tmp_path):
    pd.DataFrame({"user": [1], "item_id": [2]}).to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(DataError, match=r"log\.csv: missing column\(s\) \['user_id'\]"):
        read_table(tmp_path / "log.csv")


def test_unknown_dataset_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("MP4SR_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="MP4SR_DATA_DIR"):
        load_dataset("no-such-dataset")


# --------------------------------------------------------------------------- timestamps that are dates


def _order(ds, user):
    return [ds.items.ids[i] for i in ds.sequences[list(ds.user_ids).index(user)]]


def test_atomic_float_timestamps_holding_iso_dates(tmp_path):
    """RecBole files of the Amazon 2023 data declare timestamp:float and hold dates; a file that mixes
    dates and epoch seconds is ordered by the time both stand for."""
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    rows += ["a\tp\t5\t2015-06-23", "a\tq\t4\t2014-01-02", "a\tr\t3\t2016-12-31", "a\ts\t5\t1420070400",  # 2015-01-01
             "a\tt\t2\t2015-06-22T23:59:59Z"]
    (tmp_path / "pantry.inter").write_text("\n".join(rows) + "\n")
    ds = read_atomic(tmp_path)
    assert _order(ds, "a") == ["q", "s", "t", "p", "r"]


def test_atomic_token_timestamps_sort_as_numbers(tmp_path):
    rows = ["user_id:token\titem_id:token\ttimestamp:token"] + [f"a\ti{t}\t{t}" for t in (10, 9, 100, 11, 2)]
    (tmp_path / "x.inter").write_text("\n".join(rows) + "\n")
    assert _order(read_atomic(tmp_path), "a") == ["i2", "i9", "i10", "i11", "i100"]


def test_atomic_a_timestamp_that_is_no_date_names_its_line(tmp_path):
    rows = ["user_id:token\titem_id:token\ttimestamp:float", "a\tb\t2015-06-23", "", "a\tc\t2015-13-45"]
    (tmp_path / "x.inter").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"x\.inter, line 4: field 'timestamp' value '2015-13-45' is neither a number "
                                        r"nor an ISO date or datetime"):
        read_atomic(tmp_path)


def _dated_log(n_users=6, per_user=6):
    rng = np.random.default_rng(3)
    times = pd.Timestamp("2014-03-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 3 * 365 * 86400, n_users * per_user), "s")
    return pd.DataFrame({"user_id": np.repeat([f"u{u}" for u in range(n_users)], per_user),
                         "item_id": [f"i{k}" for k in rng.permutation(n_users * per_user) % 17],
                         "timestamp": times})


def _same_sequences(a, b):
    assert a.user_ids.tolist() == b.user_ids.tolist() and a.items.ids.tolist() == b.items.ids.tolist()
    assert a.sequences.items.tolist() == b.sequences.items.tolist()


def test_table_dates_and_datetimes_give_the_order_of_epoch_seconds(tmp_path):
    log = _dated_log()
    seconds = log.assign(timestamp=(log.timestamp - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "s"))
    seconds.to_csv(tmp_path / "seconds.csv", index=False)
    expected = read_table(tmp_path / "seconds.csv", user_core=2)
    # ISO strings in a CSV: datetimes with a zone, without one (UTC), and in another zone
    iso = log.assign(timestamp=log.timestamp.dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    iso.loc[::3, "timestamp"] = log.timestamp[::3].dt.strftime("%Y-%m-%d %H:%M:%S")
    iso.loc[1::3, "timestamp"] = log.timestamp[1::3].dt.tz_convert("Asia/Tokyo").dt.strftime("%Y-%m-%dT%H:%M:%S%z")
    iso.to_csv(tmp_path / "iso.csv", index=False)
    _same_sequences(read_table(tmp_path / "iso.csv", user_core=2), expected)
    # parquet datetime64 columns, naive and with a zone
    log.to_parquet(tmp_path / "aware.parquet")
    log.assign(timestamp=log.timestamp.dt.tz_localize(None)).to_parquet(tmp_path / "naive.parquet")
    for name in ("aware.parquet", "naive.parquet"):
        _same_sequences(read_table(tmp_path / name, user_core=2), expected)


def test_table_dates_order_a_sequence(tmp_path):
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,timestamp\nu,a,2015-06-23\nu,b,2014-01-02\nu,c,2016-12-31\nu,d,2015-06-22\nu,e,2015-06-23T08:00\n")
    assert _order(load_dataset(tmp_path, user_core=2), "u") == ["b", "d", "a", "e", "c"]


def test_table_a_timestamp_that_is_no_date_names_its_line_or_row(tmp_path):
    log = pd.DataFrame({"user_id": ["u"] * 4, "item_id": list("abcd"),
                        "timestamp": ["2015-06-23", "1434998400", "next tuesday", "2015-06-24"]})
    log.to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(DataError, match=r"log\.csv, line 4: column 'timestamp' value 'next tuesday' is neither"):
        read_table(tmp_path / "log.csv")
    log.to_parquet(tmp_path / "log.parquet")
    with pytest.raises(DataError, match=r"log\.parquet: row 3: column 'timestamp' value 'next tuesday' is neither"):
        read_table(tmp_path / "log.parquet")
