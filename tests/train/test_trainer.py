"""The Trainer's records: test metrics after every epoch, when asked for."""

from __future__ import annotations

import json

from mp4sr.config import RunConfig
from resume_support import build_trainer, small_config


def test_test_every_epoch_records_curves_without_changing_the_run(split, uninterrupted, tmp_path):
    base = small_config()
    config = RunConfig(**{**base.model_dump(), "eval": {**base.eval.model_dump(), "test_every_epoch": True}})
    result = build_trainer(split, tmp_path, config=config).fit()
    plain, _ = uninterrupted
    # ranking the test set after each epoch draws no random numbers: the same run, epoch for epoch
    assert [(r.epoch, r.loss, r.valid) for r in result.history] == [(r.epoch, r.loss, r.valid) for r in plain.history]
    assert result.test == plain.test and result.best_epoch == plain.best_epoch
    lines = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [r.epoch for r in result.history]
    best = lines[result.best_epoch - 1]
    assert {k[len("test_"):]: v for k, v in best.items() if k.startswith("test_")} == result.test
    assert all(r.test is not None for r in result.history)
    assert all(r.test is None for r in plain.history)
    assert not any(k.startswith("test_") for k in json.loads(
        (uninterrupted[1] / "epochs.jsonl").read_text().splitlines()[0]))
