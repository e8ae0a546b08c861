"""Devices and precision: which transfers go through pinned memory, what a device that torch cannot
use says, and that bf16 autocast really runs the model in bfloat16 (on the CPU here)."""

from __future__ import annotations

import pytest
import torch

from mp4sr.data.batching import SequenceBatch
from mp4sr.devices import autocast, check_device, pinned_transfer
from mp4sr.errors import ConfigError


def _batch() -> SequenceBatch:
    return SequenceBatch(torch.tensor([[1, 2, 0]]), torch.tensor([2]), torch.tensor([0]), next_items=torch.tensor([3]))


def test_only_transfers_to_a_usable_gpu_are_pinned(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pinned_transfer("cuda") and pinned_transfer("cuda:1") and pinned_transfer(torch.device("cuda", 0))
    assert not pinned_transfer("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not pinned_transfer("cuda")


def test_a_batch_for_the_cpu_is_not_pinned(monkeypatch):
    def refuse(self):
        raise AssertionError("pin_memory called for the CPU")

    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    moved = _batch().to("cpu")
    assert moved.tokens.tolist() == [[1, 2, 0]] and moved.targets is None


def test_a_batch_for_a_gpu_is_pinned_and_copied_without_waiting(monkeypatch):
    """The CUDA path, observed on a machine without a GPU: every tensor is pinned, then copied with
    non_blocking=True."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    real_to = torch.Tensor.to

    def fake_to(self, device, *args, **kwargs):
        if torch.device(device).type == "cuda":
            calls.append(("to", str(device), kwargs.get("non_blocking")))
            return self
        return real_to(self, device, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    _batch().to("cuda:0")
    tensors = 4  # tokens, lengths, rows, next_items (targets is None)
    assert calls == ["pin", ("to", "cuda:0", True)] * tensors


def test_a_device_torch_cannot_use_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"train.device='cuda' but torch .* finds no CUDA GPU: use train.device=cpu"):
        check_device("cuda")
    with pytest.raises(ConfigError, match="--device='tpu'"):
        check_device("tpu", setting="--device")
    with pytest.raises(ConfigError, match="train.precision='fp8'"):
        check_device("cpu", "fp8")
    assert check_device("cpu", "bf16") == torch.device("cpu")


def test_bf16_autocast_runs_linear_layers_in_bfloat16_and_fp32_does_not():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast("cpu", "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert layer(x).dtype == torch.float32
