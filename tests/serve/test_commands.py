"""The functions behind `mp4sr recommend` and `mp4sr export`, and the micro-batcher."""

from __future__ import annotations

import asyncio
import json

import pandas as pd
import pytest

from mp4sr.errors import ConfigError
from mp4sr.serve.batcher import MicroBatcher
from mp4sr.serve.commands import export_command, recommend_command, split_ids
from mp4sr.serve.export import export_topk


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_export_writes_every_users_topk(tmp_path, suffix, recommenders, scientific_mm):
    rec = recommenders["sasrec"]
    out = tmp_path / f"top{suffix}"
    rows = export_topk(rec, out, k=5, batch_size=1000)
    table = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out, dtype={"user_id": str, "item_id": str})
    assert rows == len(table) == scientific_mm.n_users * 5
    assert list(table.columns) == ["user_id", "rank", "item_id", "score"]
    user = 1234  # after the user's whole known sequence
    mine = table[table["user_id"] == str(scientific_mm.user_ids[user])]
    expected = rec.recommend([str(scientific_mm.items.ids[i]) for i in scientific_mm.sequences[user]], k=5)
    assert mine["item_id"].tolist() == [i for i, _ in expected]
    assert mine["rank"].tolist() == [1, 2, 3, 4, 5]
    assert not list(tmp_path.glob(".*tmp*"))


def test_export_refuses_unknown_formats(tmp_path, recommenders):
    with pytest.raises(ConfigError, match=".parquet, .csv"):
        export_topk(recommenders["sasrec"], tmp_path / "top.xlsx")


def test_export_and_recommend_commands(tmp_path, checkpoints, scientific_mm, capsys):
    out = export_command(checkpoints["mp4sr"], tmp_path / "all.parquet", k=3, echo=lambda line: None)
    assert len(pd.read_parquet(out)) == 3 * scientific_mm.n_users
    history = [str(i) for i in scientific_mm.items.ids[:4]]
    recommend_command(checkpoints["sasrec"], [*history, "unknown-id"], k=4, skip_unknown=True, as_json=True)
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["items"]) == 4 and printed["skipped"] == ["unknown-id"] and printed["fallback"] is None
    recommend_command(checkpoints["sasrec"], [], k=3)
    assert "most popular" in capsys.readouterr().out


def test_cli_history_values_are_split_in_order():
    # `--history A B,C` reaches the command as the option value "A" and the arguments "B,C"
    assert split_ids(["A"], ["B,C", "D E"], None) == ["A", "B", "C", "D", "E"]


def test_batcher_groups_waiting_jobs_and_isolates_failures():
    calls = []

    def fn(jobs):
        calls.append(list(jobs))
        return [ValueError(f"bad {j}") if j == 13 else j * 2 for j in jobs]

    async def main():
        batcher = MicroBatcher(fn, max_size=8)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(j) for j in range(20)), return_exceptions=True)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert [r for i, r in enumerate(results) if i != 13] == [2 * i for i in range(20) if i != 13]
    assert isinstance(results[13], ValueError)
    assert sorted(j for call in calls for j in call) == list(range(20))
    assert max(map(len, calls)) <= 8 and len(calls) < 20
