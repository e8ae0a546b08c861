"""data.columns names the columns of tables and atomic files; the loader gets them from the config."""

import pandas as pd
import pytest

from mp4sr.config import ColumnSettings, RunConfig, build_config
from mp4sr.data import load_dataset
from mp4sr.data.loader import ITEMS_ONLY, list_datasets
from mp4sr.errors import DataError

LOG = pd.DataFrame({"uid": ["u1"] * 3 + ["u2"] * 3, "iid": ["a", "b", "c", "c", "a", "b"],
                    "when": [3, 1, 2, 9, 8, 7]})


def _table(folder, items: pd.DataFrame | None = None):
    folder.mkdir()
    LOG.to_csv(folder / "interactions.csv", index=False)
    if items is not None:
        items.to_csv(folder / "items.csv", index=False)
    return folder


def test_table_columns_come_from_the_config(tmp_path):
    items = pd.DataFrame({"iid": ["a", "b", "c"], "title": ["Alpha", "Beta", None], "brand": ["X", "Y", "Z"],
                          "price": [1.0, 2.0, 3.0]})
    folder = _table(tmp_path / "mine", items)
    with pytest.raises(DataError, match="data.columns.user"):
        load_dataset(folder, user_core=1)
    config = build_config(RunConfig, None, ["data.columns.user=uid", "data.columns.item=iid", "data.columns.time=when",
                                            "data.columns.text=[title]", "data.user_core=1"], dataset=str(folder))
    d = config.data
    data = load_dataset(config.dataset, d.user_core, d.item_core, d.columns)
    order = {u: [data.items.ids[i] for i in data.sequences[n]] for n, u in enumerate(data.user_ids)}
    assert order == {"u1": ["b", "c", "a"], "u2": ["b", "a", "c"]}  # sorted by `when`
    assert list(data.items.text) == ["Alpha", "Beta", ""]  # only the title; a missing title is empty text


def test_without_a_time_column_rows_keep_the_file_order(tmp_path):
    folder = _table(tmp_path / "mine")
    data = load_dataset(folder, 1, 0, ColumnSettings(user="uid", item="iid", time=None))
    assert [data.items.ids[i] for i in data.sequences[0]] == ["a", "b", "c"]
    absent = load_dataset(folder, 1, 0, ColumnSettings(user="uid", item="iid", time="absent"))
    assert [absent.items.ids[i] for i in absent.sequences[0]] == ["a", "b", "c"]


def test_atomic_fields_are_mapped_too(tmp_path):
    folder = tmp_path / "atomic"
    folder.mkdir()
    rows = "".join(f"{u}\t{i}\t{t}\n" for u, i, t in LOG.itertuples(index=False))
    (folder / "x.inter").write_text("uid:token\tiid:token\twhen:float\n" + rows)
    (folder / "x.item").write_text("iid:token\tname:token_seq\na\tAlpha\nb\tBeta\nc\tGamma\n")
    data = load_dataset(folder, 1, 0, ColumnSettings(user="uid", item="iid", time="when"))
    assert [data.items.ids[i] for i in data.sequences[0]] == ["b", "c", "a"]
    assert list(data.items.text) == ["Alpha", "Beta", "Gamma"]


def test_an_item_catalogue_without_interactions_is_listed_as_such():
    found = {name: fmt for name, _, fmt in list_datasets()}
    assert found["hm-sample"] == ITEMS_ONLY and found["amazon-scientific"] == "unisrec"
