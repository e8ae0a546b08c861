"""The optimiser of a run: Adam with coupled L2 (the official MP4SR code's) or AdamW with decoupled
weight decay, over the model's parameter groups (each at ``train.lr`` times its ``lr_scale``), with
biases, normalisation weights and embeddings optionally kept out of the decay.

Adam's ``weight_decay`` adds ``weight_decay * w`` to the gradient before Adam normalises it, so for a
parameter with small gradients (a rare item's embedding) the decay dominates its steps; AdamW
shrinks every weight by ``lr * weight_decay`` per step whatever its gradient (Loshchilov & Hutter,
"Decoupled Weight Decay Regularization", ICLR 2019). The same number is therefore a much weaker
regulariser under AdamW.
"""

from __future__ import annotations

import torch
from torch import nn

from mp4sr.config import NoDecay, TrainSettings


def parameter_kinds(model: nn.Module) -> dict[int, set[NoDecay]]:
    """For each parameter (by ``id``): what it is of 'bias' (a name containing 'bias': Linear, attention
    and output biases), 'norm' (the weights of a normalisation layer, or a name containing 'norm', as
    the experts' LayerNorms of a content model's adaptor) and 'embedding' (the weights of an ``nn.Embedding``:
    item, position and ID embeddings). Parameters shared by several modules get every kind they have."""
    kinds: dict[int, set[NoDecay]] = {}
    for module_name, module in model.named_modules():
        norm_layer = isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm))
        for name, param in module.named_parameters(recurse=False):
            found = kinds.setdefault(id(param), set())
            if "bias" in name:
                found.add("bias")
            if norm_layer or "norm" in name:
                found.add("norm")
            if isinstance(module, nn.Embedding):
                found.add("embedding")
    return kinds


def no_decay_kinds(settings: TrainSettings) -> set[NoDecay]:
    """``train.no_decay``, or its default: biases and norms under AdamW, nothing under Adam."""
    if settings.no_decay is not None:
        return set(settings.no_decay)
    return {"bias", "norm"} if settings.optimizer == "adamw" else set()


def optimizer_groups(model, settings: TrainSettings) -> list[dict]:
    """The model's parameter groups at their learning rates, each split into the parameters that decay
    (``train.weight_decay``) and those that do not (weight decay 0); empty groups are left out."""
    exempt = no_decay_kinds(settings)
    kinds = parameter_kinds(model) if exempt else {}
    groups = []
    for group in model.param_groups():
        lr = settings.lr * group.get("lr_scale", 1.0)
        params = list(group["params"])
        decayed = [p for p in params if not kinds.get(id(p), set()) & exempt]
        kept = [p for p in params if kinds.get(id(p), set()) & exempt]
        groups += [{"params": decayed, "lr": lr, "weight_decay": settings.weight_decay}] if decayed else []
        groups += [{"params": kept, "lr": lr, "weight_decay": 0.0}] if kept else []
    return groups


def make_optimizer(model, settings: TrainSettings) -> torch.optim.Optimizer:
    """``train.optimizer`` over :func:`optimizer_groups`."""
    cls = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return cls(optimizer_groups(model, settings), lr=settings.lr, weight_decay=settings.weight_decay,
               betas=tuple(settings.betas))
