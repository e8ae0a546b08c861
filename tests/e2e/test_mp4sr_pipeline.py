"""End to end on real data: `mp4sr run` imports the CLIP vectors, pre-trains, fine-tunes, reports."""

import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.e2e


def test_run_pipeline_beats_popularity(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "mp4sr", "run", "--dataset", "amazon-scientific-mm", "--out", str(out),
        "--pretrain-set", "train.epochs=2", "--set", "train.epochs=3",
        "--set", "train.batch_size=512", "--set", "train.progress=false",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    metrics = json.loads((out / "metrics.json").read_text())
    pop = subprocess.run(
        [sys.executable, "-m", "mp4sr", "train", "--model", "pop", "--out", str(tmp_path / "pop")],
        check=True, capture_output=True, text=True,
    )
    pop_metrics = json.loads((tmp_path / "pop" / "metrics.json").read_text())
    assert pop.returncode == 0
    assert metrics["test"]["ndcg@10"] > 2 * pop_metrics["test"]["ndcg@10"]
    report = (out / "report.md").read_text()
    assert "fine-tuned, test" in report and f"{metrics['test']['ndcg@10']:.4f}" in report
    assert "![learning curves](curves.png)" in report and (out / "curves.png").stat().st_size > 1000
    for stage in ("pretrain", "finetune"):  # each stage's TensorBoard event file beside its epochs.jsonl
        assert len(list((out / stage / "tensorboard").glob("events.out.tfevents.*"))) == 1
    pre = torch.load(out / "pretrain" / "best.pt", weights_only=True)
    fine = torch.load(out / "finetune" / "best.pt", weights_only=True)
    assert pre["config"]["params"]["stage"] == "pretrain"
    assert fine["config"]["init_from"].endswith("best.pt")
    assert "id_embedding.weight" in fine["state_dict"] and "id_embedding.weight" not in pre["state_dict"]
