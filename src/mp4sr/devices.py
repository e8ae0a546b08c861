"""Where tensors live and in which precision the model runs: the checks and helpers that training,
evaluation and serving share.

- ``check_device``: a configured device that torch cannot use is an error before any work starts;
- ``pinned_transfer``: host tensors bound for a GPU are copied from pinned (page-locked) memory,
  asynchronously; for the CPU nothing is copied at all;
- ``autocast``: ``precision="bf16"`` runs the forward pass and the loss under ``torch.autocast`` in
  bfloat16 (on CUDA and on the CPU alike); ``"fp32"`` runs everything in float32.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from mp4sr.errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def check_device(device: str | torch.device, precision: str = "fp32", setting: str = "train.device") -> torch.device:
    """``device`` as a torch.device, or a ConfigError that says what to set instead (``setting``: the
    option's name in the messages)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"{setting}={device!r} is not a device torch knows ({e}): use 'cpu' or 'cuda'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting}={device!r} but torch {torch.__version__} finds no CUDA GPU: "
                              f"use {setting}=cpu, or a CUDA build of torch on a machine with a GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{setting}={device!r} but there are {torch.cuda.device_count()} GPU(s)")
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"train.precision=bf16 but {torch.cuda.get_device_name(dev)} has no bfloat16: "
                              "use train.precision=fp32")
    elif dev.type != "cpu":
        raise ConfigError(f"{setting}={device!r} is not supported: use 'cpu' or 'cuda'")
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    return dev


def pinned_transfer(device: str | torch.device) -> bool:
    """Whether tensors bound for ``device`` go through pinned host memory (only for a usable GPU:
    pinning costs a copy and page-locked memory, and buys nothing for the CPU)."""
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def to_device(t: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``t`` on ``device``; a CPU tensor bound for a GPU is pinned first and copied without waiting."""
    if pinned_transfer(device) and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def autocast(device: str | torch.device, precision: str = "fp32") -> ContextManager:
    """The mixed-precision context of ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
