"""TensorBoard event files of a run, read back with TensorBoard's own reader: the same values as
epochs.jsonl, each epoch once even after a kill and a resumption; nothing (and no error) without
the tensorboard package."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from mp4sr.config import RunConfig
from mp4sr.train import runlog
from resume_support import EPOCHS, small_config

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


class Crash(Exception):
    """Stands for SIGKILL between writing an epoch's records and its last.pt."""


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_matches_history(folder) -> None:
    rows = [json.loads(line) for line in (folder / "epochs.jsonl").read_text().splitlines()]
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for tag, value in runlog.epoch_scalars(row).items():
            expected.setdefault(tag, []).append((row["epoch"], value))
    found = scalars(folder)
    assert found.keys() == expected.keys()
    for tag, points in expected.items():  # TensorBoard stores float32
        assert [s for s, _ in found[tag]] == [s for s, _ in points], tag
        assert [v for _, v in found[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_event_files_hold_what_epochs_jsonl_says(uninterrupted):
    folder = uninterrupted[1]
    assert_matches_history(folder)
    found = scalars(folder)
    epochs = list(range(1, EPOCHS + 1))
    for tag in ("train/loss", "train/lr", "valid/ndcg@10", "valid/recall@20", "time/train_seconds",
                "time/eval_seconds"):
        assert [step for step, _ in found[tag]] == epochs, tag
    assert [v for _, v in found["train/lr"]] == pytest.approx([3e-3] * EPOCHS)
    assert not any(tag.startswith("test/") for tag in found)


def test_a_resumed_run_shows_each_epoch_once_with_test_curves(make_trainer, tmp_path, monkeypatch):
    base = small_config()
    config = RunConfig(**{**base.model_dump(), "eval": {**base.eval.model_dump(), "test_every_epoch": True}})
    trainer = make_trainer(tmp_path, config=config)
    save_last = trainer._save_last

    def die_after_logging_epoch_2(optimizer, rng, position=None):
        if trainer.state.epoch == 2:
            raise Crash  # epoch 2 is in epochs.jsonl and the event file, but not in last.pt
        save_last(optimizer, rng, position)

    monkeypatch.setattr(trainer, "_save_last", die_after_logging_epoch_2)
    with pytest.raises(Crash):
        trainer.fit()
    assert [step for step, _ in scalars(tmp_path)["train/loss"]] == [1, 2]

    make_trainer(tmp_path, resume=True, config=config).fit()  # epochs 2 and 3 again
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert_matches_history(tmp_path)  # epoch 2 once, the resumed process's
    found = scalars(tmp_path)
    assert [step for step, _ in found["test/ndcg@10"]] == list(range(1, EPOCHS + 1))


def test_without_tensorboard_nothing_is_written_and_one_line_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    monkeypatch.setattr(runlog, "_said_missing", False)
    board = runlog.TensorBoardLog(tmp_path / "tensorboard")
    with caplog.at_level(logging.INFO, logger="mp4sr.train"):
        for epoch in (1, 2):
            board.epoch({"epoch": epoch, "loss": 1.0, "valid_ndcg@10": 0.1})
        board.close()
    assert not (tmp_path / "tensorboard").exists()
    assert [r.getMessage() for r in caplog.records] == [
        "tensorboard is not installed: no TensorBoard event files (pip install 'mp4sr[logs]')"]


def test_tensorboard_false_writes_no_event_files(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path, config=small_config(epochs=1, tensorboard=False))
    trainer.fit()
    assert (tmp_path / "epochs.jsonl").is_file() and not (tmp_path / "tensorboard").exists()
