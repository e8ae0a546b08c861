"""What the contrastive pre-training of MP4SR and UniSRec shares: the random item dropout of sequences,
in-batch InfoNCE, and loading a pre-trained encoder into a fine-tuning model (each method's own losses
stay in its module: MP4SR's cross-modality contrast, UniSRec's sequence-sequence one)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mp4sr.data.batching import IGNORE, PAD, SequenceBatch
from mp4sr.errors import ConfigError


def item_dropout(batch: SequenceBatch, max_p: float, generator: torch.Generator | None = None) -> SequenceBatch:
    """Remove each item with probability p ~ U(0, max_p) (per sequence), keep at least one, pack left.

    A kept position takes the target of the last position before the next kept one, so each output
    still predicts the item that follows its (thinned) prefix, as in the prefix form of the paper."""
    tokens, targets = batch.tokens, batch.targets
    B, L = tokens.shape
    real = tokens != PAD
    p = torch.rand(B, 1, generator=generator, device=tokens.device) * max_p
    keep = real & (torch.rand(B, L, generator=generator, device=tokens.device) >= p)
    none = ~keep.any(1)
    keep[none, (batch.lengths[none] - 1)] = True
    pos = torch.arange(L, device=tokens.device).expand(B, L)
    # next kept position after p (L when none): suffix minimum of the kept positions, shifted by one
    kept_pos = torch.where(keep, pos, torch.full_like(pos, L))
    suffix_min = torch.flip(torch.cummin(torch.flip(kept_pos, [1]), dim=1).values, [1])
    next_kept = torch.cat([suffix_min[:, 1:], torch.full((B, 1), L, device=tokens.device)], dim=1)
    source = torch.minimum(next_kept, batch.lengths[:, None]) - 1
    moved_targets = targets.gather(1, source)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    lengths = keep.sum(1)
    packed = pos < lengths[:, None]
    new_tokens = torch.where(packed, tokens.gather(1, order), PAD)
    new_targets = torch.where(packed, moved_targets.gather(1, order), IGNORE)
    return SequenceBatch(new_tokens, lengths, batch.rows, targets=new_targets)


def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """-mean log softmax(anchor . candidate / tau)[label], both sides L2-normalised."""
    logits = F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).T / tau
    return F.cross_entropy(logits, labels)


def load_encoder(model: nn.Module, state_dict: dict[str, torch.Tensor], fresh: str = "id_embedding") -> list[str]:
    """Load the pre-trained weights of ``state_dict`` into ``model``; the weights under ``fresh`` (the
    item-ID embeddings, absent in pre-training) stay new. Returns the names the checkpoint did not hold."""
    state = {k: v for k, v in state_dict.items() if not k.startswith(fresh)}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ConfigError(f"the checkpoint has weights this model lacks: {result.unexpected_keys[:5]}")
    absent = [k for k in result.missing_keys if not k.startswith(fresh)]
    if absent:
        raise ConfigError(
            f"the checkpoint lacks weights for {absent[:5]}: was it pre-trained with other modalities or other "
            f"item settings (params.pooling, params.adaptor)?")
    return result.missing_keys
