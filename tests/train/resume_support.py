"""Helpers of the training tests (a small SASRec config, a Trainer built the same way every time, and
the comparison of two runs); the fixtures are in conftest.py."""

from __future__ import annotations

from pathlib import Path

import torch

from mp4sr.config import RunConfig
from mp4sr.models import ModelContext, build_model
from mp4sr.train.run import checkpoint_payload
from mp4sr.train.trainer import Trainer, TrainResult

SMALL = {"hidden": 16, "layers": 1, "heads": 1, "ffn": 32, "dropout": 0.3, "attn_dropout": 0.3}
EPOCHS = 3  # 12 batches of 256 per epoch


def small_config(**train) -> RunConfig:
    settings = {"epochs": EPOCHS, "batch_size": 256, "progress": False, "threads": 1, "seed": 7, "lr": 3e-3, **train}
    return RunConfig(model="sasrec", dataset="amazon-scientific-mm", params=SMALL, data={"max_len": 20},
                     train=settings, eval={"ks": [10, 20]})


def build_trainer(split, out: Path | None, resume=False, config: RunConfig | None = None, **kwargs) -> Trainer:
    """A Trainer of a freshly built model whose initial weights are the same every time."""
    config = config or small_config()
    ds = split.dataset
    torch.manual_seed(0)
    context = ModelContext(n_items=ds.n_items, max_len=config.data.max_len, item_counts=split.train_counts())
    model = build_model(config.model, config.params, context)
    examples = split.train_examples(config.data.training_mode, config.data.max_len)
    kwargs.setdefault("checkpoint_extra", checkpoint_payload(config, ds))
    return Trainer(model, split, examples, config.train, config.eval, config.data.max_len, out, resume=resume, **kwargs)


def assert_same_run(a: TrainResult, b: TrainResult) -> None:
    """Bit-for-bit the same: best epoch, test and valid metrics, and every epoch's loss and metrics."""
    assert a.best_epoch == b.best_epoch
    assert a.test == b.test
    assert a.valid == b.valid
    assert [(r.epoch, r.loss, r.valid) for r in a.history] == [(r.epoch, r.loss, r.valid) for r in b.history]
    assert (a.test_ranks == b.test_ranks).all()
