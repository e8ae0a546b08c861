"""End to end on a text-only catalogue made from real data: `amazon-scientific`'s sequences written as
`interactions.csv` (ISO dates as timestamps) and its item texts as `items.csv`, with no images. `mp4sr run`
computes MiniLM text vectors, pre-trains and fine-tunes MP4SR on text alone, and the model serves."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mp4sr.cli import app
from mp4sr.data import load_dataset
from mp4sr.paths import CACHE_ENV
from mp4sr.serve import Recommender

pytestmark = pytest.mark.e2e

# The 300 items with the most interactions and the users with at least 5 of them (734 users, 4,401
# interactions): MiniLM encodes 300 texts in seconds, where the items of even 1,500 random users
# (3,500) take minutes on 2 cores.
N_ITEMS = 300


def write_text_only_table(scientific, folder):
    """The sequences restricted to the most popular items, one interaction every 3 days from 2018-01-01
    (the order of the sequence), and those items' texts."""
    counts = np.bincount(scientific.sequences.items, minlength=scientific.n_items)
    keep = np.zeros(scientific.n_items, dtype=bool)
    keep[np.argsort(-counts, kind="stable")[:N_ITEMS]] = True
    logs = []
    for user in range(scientific.n_users):
        seq = scientific.sequences[user]
        seq = seq[keep[seq]]
        if len(seq) >= 5:
            days = pd.Timestamp("2018-01-01") + pd.to_timedelta(3 * np.arange(len(seq)) + user % 3, "D")
            logs.append(pd.DataFrame({"user_id": scientific.user_ids[user], "item_id": scientific.items.ids[seq],
                                      "timestamp": days.strftime("%Y-%m-%d")}))
    folder.mkdir()
    log = pd.concat(logs)
    log.to_csv(folder / "interactions.csv", index=False)
    items = np.flatnonzero(keep)
    pd.DataFrame({"item_id": scientific.items.ids[items], "text": [scientific.items.text[i] for i in items]}) \
        .to_csv(folder / "items.csv", index=False)
    return log


def test_run_on_a_text_only_table_beats_popularity(scientific, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # the text vectors are computed here, not reused
    folder = tmp_path / "scientific-text"
    log = write_text_only_table(scientific, folder)
    data = load_dataset(folder)  # dates order each user's items as the sequence they came from
    first = log.user_id.iloc[0]
    assert data.n_items == N_ITEMS and data.items.ids[data.sequences[list(data.user_ids).index(first)]].tolist() == \
        log[log.user_id == first].drop_duplicates("item_id", keep="last").item_id.tolist()

    runner, out = CliRunner(), tmp_path / "run"
    quick = ["train.epochs=2", "train.progress=false"]
    args = ["run", "--dataset", str(folder), "--out", str(out)]
    args += [a for kv in quick for a in ("--pretrain-set", kv)] + [a for kv in quick for a in ("--set", kv)]
    with caplog.at_level(logging.INFO, logger="mp4sr"):
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    said = [r.getMessage() for r in caplog.records if r.name == "mp4sr.models"]
    assert said == ["dataset 'scientific-text' has no image features: mp4sr runs on text only"]  # once: fine-tuning inherits
    for stage in ("pretrain", "finetune"):
        ckpt = torch.load(out / stage / "best.pt", map_location="cpu", weights_only=True)
        assert ckpt["data_settings"] == {"modalities": ["text"]} and set(ckpt["features"]) == {"text"}
        assert not any("image" in name for name in ckpt["state_dict"])
    assert "modalities text" in (out / "report.md").read_text()

    result = runner.invoke(app, ["train", "--model", "pop", "--dataset", str(folder), "--out", str(tmp_path / "pop")])
    assert result.exit_code == 0, result.output
    mp4sr = json.loads((out / "metrics.json").read_text())["test"]
    pop = json.loads((tmp_path / "pop" / "metrics.json").read_text())["test"]
    assert mp4sr["ndcg@10"] > 1.5 * pop["ndcg@10"], (mp4sr, pop)

    served = Recommender.load(out / "finetune")
    history = log[log.user_id == first].item_id.tolist()
    top = served.recommend(history, k=10)
    assert served.modalities == ["text"] and len(top) == 10 and not set(history) & {item for item, _ in top}
