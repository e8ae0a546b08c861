"""Resumption in-process: a run stopped at any point and resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import errno
import json
import os
import signal

import pytest
import torch

from resume_support import EPOCHS, assert_same_run, small_config
from mp4sr.train.checkpoint import CheckpointError, CheckpointMismatch, atomic_save
from mp4sr.train.trainer import Trainer, TrainingInterrupted

STEPS_PER_EPOCH = 12


class Crash(Exception):
    """Stands for SIGKILL: the process dies with nothing saved."""


def stop_at_step(trainer: Trainer, step: int, action) -> list[int]:
    """Run ``action()`` just before training step ``step`` (1-based, counted over the whole run)."""
    calls = [0]
    original = trainer.model.calculate_loss

    def calculate_loss(batch):
        calls[0] += 1
        if calls[0] == step:
            action()
        return original(batch)

    trainer.model.calculate_loss = calculate_loss
    return calls


def raise_crash():
    raise Crash


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def worsen_after_epoch_1(monkeypatch) -> None:
    """Validation N@10 that is best at epoch 1 and lower after every later epoch."""
    real_evaluate = Trainer.evaluate

    def evaluate(self, which="valid"):
        result = real_evaluate(self, which)
        if which == "valid":
            result.metrics["ndcg@10"] = 1 / (1 + len(self.state.history))
        return result

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


def test_crash_mid_epoch_then_resume_matches(uninterrupted, make_trainer, tmp_path):
    trainer = make_trainer(tmp_path)
    stop_at_step(trainer, STEPS_PER_EPOCH + 5, raise_crash)  # in epoch 2
    with pytest.raises(Crash):
        trainer.fit()
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (last["epoch"], last["step"], last["position"]) == (1, STEPS_PER_EPOCH, None)
    assert len(lines(tmp_path / "epochs.jsonl")) == 1

    result = make_trainer(tmp_path, resume=True).fit()
    assert_same_run(result, uninterrupted[0])
    assert [r["epoch"] for r in lines(tmp_path / "epochs.jsonl")] == list(range(1, EPOCHS + 1))
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == result.best_epoch


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_the_position_and_resume_matches(uninterrupted, make_trainer, tmp_path, signum):
    before = signal.getsignal(signum)
    trainer = make_trainer(tmp_path)
    stop_at_step(trainer, STEPS_PER_EPOCH + 5, lambda: os.kill(os.getpid(), signum))
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    e = info.value
    assert e.exit_code == 128 + signum and e.folder == tmp_path
    assert str(tmp_path / "last.pt") in str(e) and "--resume" in str(e) and "during epoch 2 (5 of 12" in str(e)
    assert signal.getsignal(signum) is before  # the previous handler is back

    last = torch.load(tmp_path / "last.pt", weights_only=True)
    position = last["position"]
    assert (last["epoch"], last["step"], position["epoch"], position["done"]) == (1, STEPS_PER_EPOCH + 5, 2, 5)
    n_examples = len(trainer.examples)
    assert sorted(position["order"].tolist()) == list(range(n_examples))  # the epoch's whole order
    assert position["sizes"].sum() == n_examples and len(position["sizes"]) == STEPS_PER_EPOCH

    result = make_trainer(tmp_path, resume=True).fit()
    assert_same_run(result, uninterrupted[0])


def test_signal_at_the_end_of_an_epoch_stops_after_saving_it(uninterrupted, make_trainer, tmp_path):
    trainer = make_trainer(tmp_path)
    stop_at_step(trainer, STEPS_PER_EPOCH, lambda: os.kill(os.getpid(), signal.SIGINT))  # last step of epoch 1
    with pytest.raises(TrainingInterrupted, match="after epoch 1"):
        trainer.fit()
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (last["epoch"], last["position"]) == (1, None)
    assert_same_run(make_trainer(tmp_path, resume=True).fit(), uninterrupted[0])


def test_killed_between_last_and_best_repairs_best(uninterrupted, make_trainer, tmp_path, monkeypatch):
    """last.pt is written before best.pt: dying in between leaves the best weights in last.pt."""
    trainer = make_trainer(tmp_path)
    real_save_best = Trainer._save_best

    def save_best(self, epoch, valid):
        if epoch == 2:
            raise Crash
        real_save_best(self, epoch, valid)

    monkeypatch.setattr(Trainer, "_save_best", save_best)
    with pytest.raises(Crash):
        trainer.fit()
    monkeypatch.setattr(Trainer, "_save_best", real_save_best)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == last["best_epoch"] == 2
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1

    result = make_trainer(tmp_path, resume=True).fit()
    assert_same_run(result, uninterrupted[0])
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == result.best_epoch


def test_resuming_a_finished_run_only_evaluates(uninterrupted, make_trainer, finished_copy):
    (finished_copy / ".last.pt.tmp-99999").write_bytes(b"left by a run killed while saving")
    trainer = make_trainer(finished_copy, resume=True)
    calls = stop_at_step(trainer, 10**9, lambda: None)
    assert_same_run(trainer.fit(), uninterrupted[0])
    assert calls[0] == 0
    assert not (finished_copy / ".last.pt.tmp-99999").exists()


def test_resume_without_last_pt_starts_from_scratch(uninterrupted, make_trainer, tmp_path):
    assert_same_run(make_trainer(tmp_path / "new", resume=True).fit(), uninterrupted[0])


def test_full_disk_keeps_the_previous_checkpoints(uninterrupted, make_trainer, tmp_path, monkeypatch):
    real_save = torch.save
    saved = []

    def save(obj, f, *args, **kwargs):
        if obj["kind"] == "last" and obj["epoch"] == 2:  # the disk fills up at the end of epoch 2
            saved.extend((tmp_path / name).read_bytes() for name in ("last.pt", "best.pt"))
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*last\.pt: No space left on device"):
        make_trainer(tmp_path).fit()
    assert [(tmp_path / n).read_bytes() for n in ("last.pt", "best.pt")] == saved  # untouched
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    monkeypatch.setattr(torch, "save", real_save)
    assert_same_run(make_trainer(tmp_path, resume=True).fit(), uninterrupted[0])  # and it resumes from there


def test_refuses_another_item_index(make_trainer, finished_copy):
    extra = torch.load(finished_copy / "last.pt", weights_only=True)
    other = {**{k: extra[k] for k in ("model_name", "config", "dataset")}, "item_ids": extra["item_ids"][:-1]}
    with pytest.raises(CheckpointMismatch, match="trained on 1585 items .*the dataset has 1584: use the same dataset, or retrain"):
        make_trainer(finished_copy, resume=True, checkpoint_extra=other).fit()
    swapped = list(extra["item_ids"])
    swapped[3], swapped[4] = swapped[4], swapped[3]
    with pytest.raises(CheckpointMismatch, match=f"item 3 is {extra['item_ids'][3]!r} in the checkpoint"):
        make_trainer(finished_copy, resume=True, checkpoint_extra={**other, "item_ids": swapped}).fit()


def test_refuses_other_features(make_trainer, finished_copy):
    ckpt = torch.load(finished_copy / "last.pt", weights_only=True)
    text = {"encoder": "all-MiniLM-L6-v2", "mode": "text", "input_hash": "a" * 64, "item_ids_hash": "b" * 64,
            "shape": [1585, 10, 384], "dtype": "float16"}
    atomic_save({**ckpt, "features": {"text": text}}, finished_copy / "last.pt")
    with pytest.raises(CheckpointMismatch, match=r"the text features differ from the checkpoint's in their inputs"):
        make_trainer(finished_copy, resume=True, feature_manifest={"text": {**text, "input_hash": "c" * 64}}).fit()
    with pytest.raises(CheckpointMismatch, match=r"trained with text features .* that this run does not have"):
        make_trainer(finished_copy, resume=True, feature_manifest={}).fit()


def test_refuses_other_settings_but_allows_more_epochs(make_trainer, finished_copy):
    with pytest.raises(CheckpointMismatch, match=r"train\.lr: 0\.003 in the checkpoint, 0\.001 now"):
        config = small_config(lr=1e-3)
        make_trainer(finished_copy, resume=True, config=config).fit()
    result = make_trainer(finished_copy, resume=True, config=small_config(epochs=EPOCHS + 1)).fit()
    assert [r.epoch for r in result.history] == list(range(1, EPOCHS + 2))


def test_best_pt_is_not_a_training_state(make_trainer, finished_copy):
    with pytest.raises(CheckpointError, match="weights only"):
        make_trainer(finished_copy, resume=finished_copy / "best.pt").fit()
    (finished_copy / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        make_trainer(finished_copy, resume=True).fit()


def test_early_stopping_counter_is_restored(make_trainer, tmp_path, monkeypatch):
    """Validation that gets worse after epoch 1: with patience 2 the run stops after epoch 3 of 5, also when
    it was killed in epoch 3 (only if the no-improvement counter survives in last.pt)."""
    worsen_after_epoch_1(monkeypatch)
    config = small_config(epochs=5, patience=2)
    reference = make_trainer(tmp_path / "reference", config=config).fit()
    assert reference.best_epoch == 1 and [r.epoch for r in reference.history] == [1, 2, 3]

    trainer = make_trainer(tmp_path / "run", config=config)
    stop_at_step(trainer, 2 * STEPS_PER_EPOCH + 3, raise_crash)
    with pytest.raises(Crash):
        trainer.fit()
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["waited"] == 1
    assert_same_run(make_trainer(tmp_path / "run", resume=True, config=config).fit(), reference)


def test_a_plateau_goes_back_to_the_best_weights_at_a_lower_rate(make_trainer, tmp_path, monkeypatch):
    """train.lr_decay: validation that only gets worse after epoch 1, lr_patience 2: after epochs 3 and 5 the
    weights are epoch 1's again and the rate is halved each time; a run killed after the first decay and
    resumed is the same run (the rate lives in the optimiser's state, the weights in last.pt)."""
    worsen_after_epoch_1(monkeypatch)
    lr = small_config().train.lr
    config = small_config(epochs=6, patience=10, lr_decay=0.5, lr_patience=2)
    reference = make_trainer(tmp_path / "reference", config=config).fit()
    assert [r.lr for r in reference.history] == pytest.approx([lr, lr, lr, lr / 2, lr / 2, lr / 4])
    assert reference.best_epoch == 1

    three = make_trainer(tmp_path / "three", config=small_config(epochs=3, patience=10, lr_decay=0.5, lr_patience=2))
    three.fit()
    best = torch.load(tmp_path / "three" / "best.pt", weights_only=True)["state_dict"]
    last = torch.load(tmp_path / "three" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(best[k], last[k]) for k in best)  # back to epoch 1 after epoch 3

    plain = make_trainer(tmp_path / "plain", config=small_config(epochs=6, patience=10)).fit()
    assert [r.lr for r in plain.history] == [lr] * 6
    assert [r.loss for r in plain.history][:3] == [r.loss for r in reference.history][:3]
    assert plain.history[3].loss != reference.history[3].loss

    trainer = make_trainer(tmp_path / "run", config=config)
    stop_at_step(trainer, 3 * STEPS_PER_EPOCH + 5, raise_crash)
    with pytest.raises(Crash):
        trainer.fit()
    assert_same_run(make_trainer(tmp_path / "run", resume=True, config=config).fit(), reference)


def test_a_decay_below_lr_min_ends_the_run_at_the_best_weights(make_trainer, tmp_path, monkeypatch):
    """train.lr_min: the second decay would take the rate to a quarter, below the floor, so the run stops after
    epoch 5 instead of training to epoch 10; the same after a crash and a resume."""
    worsen_after_epoch_1(monkeypatch)
    lr = small_config().train.lr
    config = small_config(epochs=10, patience=10, lr_decay=0.5, lr_patience=2, lr_min=lr / 3)
    reference = make_trainer(tmp_path / "reference", config=config).fit()
    assert [r.lr for r in reference.history] == pytest.approx([lr, lr, lr, lr / 2, lr / 2])
    assert reference.best_epoch == 1

    unbounded = make_trainer(tmp_path / "unbounded", config=small_config(epochs=10, patience=10, lr_decay=0.5,
                                                                          lr_patience=2)).fit()
    assert len(unbounded.history) == 10

    trainer = make_trainer(tmp_path / "run", config=config)
    stop_at_step(trainer, 3 * STEPS_PER_EPOCH + 5, raise_crash)
    with pytest.raises(Crash):
        trainer.fit()
    assert_same_run(make_trainer(tmp_path / "run", resume=True, config=config).fit(), reference)
