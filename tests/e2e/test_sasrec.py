"""End to end on real data: a few epochs of SASRec beat popularity; amazon-beauty-ids trains."""

import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.e2e


def _train(tmp_path, *args):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mp4sr", "train", "--out", str(out), *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads((out / "metrics.json").read_text()), out


def test_sasrec_beats_popularity(tmp_path):
    pop, _ = _train(tmp_path / "pop", "--model", "pop", "--dataset", "amazon-scientific-mm")
    sasrec, out = _train(
        tmp_path / "sasrec", "--model", "sasrec", "--dataset", "amazon-scientific-mm",
        "--set", "train.epochs=6", "--set", "train.batch_size=256", "--set", "train.progress=false",
    )
    assert sasrec["test"]["ndcg@10"] > 1.2 * pop["test"]["ndcg@10"]
    assert sasrec["test"]["recall@10"] > pop["test"]["recall@10"]
    epochs = (out / "epochs.jsonl").read_text().splitlines()
    assert len(epochs) == 6
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["model_name"] == "sasrec" and len(ckpt["item_ids"]) == 1585
    assert ckpt["epoch"] == sasrec["best_epoch"]


def test_beauty_ids_trains(tmp_path):
    metrics, _ = _train(
        tmp_path, "--model", "sasrec", "--dataset", "amazon-beauty-ids",
        "--set", "train.epochs=1", "--set", "train.progress=false", "--set", "params.layers=1",
    )
    assert metrics["best_epoch"] == 1
    assert 0 < metrics["test"]["recall@50"] < 1


def test_sasrec_with_sampled_softmax_beats_popularity(tmp_path):
    pop, _ = _train(tmp_path / "pop", "--model", "pop", "--dataset", "amazon-scientific-mm")
    sampled, _ = _train(
        tmp_path / "sampled", "--model", "sasrec", "--dataset", "amazon-scientific-mm",
        "--set", "train.epochs=6", "--set", "train.batch_size=256", "--set", "train.progress=false",
        "--set", "params.loss=sampled", "--set", "params.negatives=128",
    )
    assert sampled["test"]["ndcg@10"] > 1.2 * pop["test"]["ndcg@10"]
