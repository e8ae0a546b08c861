"""Mixed precision and devices in the Trainer, on the CPU: bf16 autocast trains the same small SASRec
as float32 to within a stated tolerance, and a GPU that is not there is refused before any work."""

from __future__ import annotations

import pytest
import torch

from mp4sr.errors import ConfigError
from resume_support import build_trainer, small_config


def test_bf16_autocast_trains_close_to_fp32(split, uninterrupted):
    trainer = build_trainer(split, None, config=small_config(precision="bf16"))
    dtypes = set()
    for layer in trainer.model.modules():
        if isinstance(layer, torch.nn.Linear):
            layer.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype) if m.training else None)
    bf16 = trainer.fit()
    fp32, _ = uninterrupted
    assert dtypes == {torch.bfloat16}  # every linear layer of the training steps ran in bfloat16
    # the same 3 epochs (same batches, same initial weights): the rounding of bfloat16 is visible in
    # the losses but moves them by under 1e-4 relative, and the metrics by less than two seeds differ
    # (0.0015 NDCG@10 between seeds 7 and 8 of this setting)
    losses = [(a.loss, b.loss) for a, b in zip(fp32.history, bf16.history)]
    assert len(losses) == 3 and any(a != b for a, b in losses)
    assert all(abs(a - b) <= 1e-4 * a for a, b in losses)
    assert fp32.history[-1].loss < fp32.history[0].loss - 0.2  # the model learned something to compare
    for split_name, a, b in (("valid", fp32.valid, bf16.valid), ("test", fp32.test, bf16.test)):
        assert abs(a["ndcg@10"] - b["ndcg@10"]) <= 0.0015, split_name
        assert abs(a["recall@20"] - b["recall@20"]) <= 0.004, split_name


def test_training_on_a_missing_gpu_is_refused(split, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.device='cuda' but torch .* finds no CUDA GPU"):
        build_trainer(split, None, config=small_config(device="cuda"))
