"""The process group's backend follows the configured device, not the machine's hardware."""

from __future__ import annotations

import torch

from mp4sr.train.distributed import backend_for


def test_nccl_only_when_training_on_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with GPUs...
    assert backend_for("cpu") == "gloo"  # ...training on its CPUs
    assert backend_for("cuda") == backend_for("cuda:1") == "nccl"
