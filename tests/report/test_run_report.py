"""The report of `mp4sr run`: the metrics table and, beside report.md, the learning curves of both
stages as a PNG that the report links."""

from __future__ import annotations

import json

import matplotlib.image

from mp4sr.config import RunConfig, build_config
from mp4sr.models import DEFAULT_PRETRAINABLE
from mp4sr.report import write_run_report
from mp4sr.stages import stage_base

METRICS = {"valid": {"ndcg@10": 0.05}, "test": {"ndcg@10": 0.04, "recall@10": 0.08}, "best_epoch": 3}


def _stage(folder, epochs: int, loss0: float) -> None:
    folder.mkdir(parents=True)
    rows = [{"epoch": e, "loss": loss0 / e, "lr": 1e-3, "train_seconds": 1.0, "eval_seconds": 0.1,
             "valid_ndcg@10": 0.01 * e} for e in range(1, epochs + 1)]
    (folder / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _configs():
    return tuple(build_config(RunConfig, base=stage_base(DEFAULT_PRETRAINABLE, stage)) for stage in ("pretrain", "finetune"))


def test_the_report_links_the_learning_curves_beside_it(tmp_path):
    _stage(tmp_path / "pretrain", 6, 9.0)
    _stage(tmp_path / "finetune", 4, 7.0)
    report = write_run_report(tmp_path, METRICS, METRICS, *_configs())
    text = report.read_text()
    assert "![learning curves](curves.png)" in text
    image = matplotlib.image.imread(tmp_path / "curves.png")
    height, width = image.shape[:2]
    assert width > 1.4 * height  # two panels side by side: training loss and validation NDCG@10
    assert image[..., :3].std() > 0.05  # lines drawn, not a blank canvas


def test_no_recorded_epochs_no_curves(tmp_path):
    report = write_run_report(tmp_path, METRICS, METRICS, *_configs())
    assert "curves" not in report.read_text() and not (tmp_path / "curves.png").exists()
