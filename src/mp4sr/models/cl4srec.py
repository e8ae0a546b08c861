"""CL4SRec (Xie et al., ICDE 2022): SASRec plus a contrastive loss between two augmented views.

Each training sequence gets two views, each made by one augmentation drawn at random:
crop (keep a random contiguous ``crop_eta`` of the items), mask (replace ``mask_gamma`` of them by a
[mask] token, id ``n_items + 1``) or reorder (shuffle a random contiguous ``reorder_beta`` of them).
The views' last hidden states are contrasted with NT-Xent (the other 2B - 2 views of the batch are
the negatives): ``L = L_CE + cl_weight * L_cl``. Defaults follow the CL4SRec implementation in the
RUCAIBox DuoRec repository: eta 0.6, gamma 0.3, beta 0.6, weight (lambda) 0.1, temperature 1,
dot-product similarity; the encoder keeps SASRec's RecBole defaults.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mp4sr.data.batching import PAD, SequenceBatch
from mp4sr.models.base import ModelContext, register
from mp4sr.models.layers import init_weights, last_positions
from mp4sr.models.sasrec import SASRec, SASRecConfig


class CL4SRecConfig(SASRecConfig):
    cl_weight: float = Field(0.1, description="lambda of the contrastive loss between two augmented views")
    tau: float = Field(1.0, description="temperature of the contrastive loss")
    crop_eta: float = Field(0.6, description="crop: share of the items kept (a contiguous span)")
    mask_gamma: float = Field(0.3, description="mask: share of the items replaced by a mask token")
    reorder_beta: float = Field(0.6, description="reorder: share of the items shuffled (a contiguous span)")


def _span(lengths: torch.Tensor, ratio: float, minimum: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random contiguous span of ``floor(ratio * length)`` (at least ``minimum``) items per row:
    (start [B, 1], size [B, 1])."""
    n = lengths[:, None]
    size = torch.floor(ratio * n.float()).long().clamp(min=minimum).minimum(n)
    start = torch.floor(torch.rand(n.shape, device=n.device) * (n - size + 1).float()).long()
    return start, size


def crop(tokens: torch.Tensor, lengths: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    start, size = _span(lengths, eta, minimum=1)
    pos = torch.arange(tokens.shape[1], device=tokens.device)[None]
    src = (start + pos).clamp(max=tokens.shape[1] - 1)
    return torch.where(pos < size, tokens.gather(1, src), PAD), size.squeeze(1)


def mask(tokens: torch.Tensor, lengths: torch.Tensor, gamma: float, mask_token: int) -> torch.Tensor:
    """``floor(gamma * length)`` random items of each row replaced by ``mask_token``."""
    draw = torch.rand(tokens.shape, device=tokens.device).masked_fill(tokens == PAD, 2.0)
    rank = draw.argsort(dim=1).argsort(dim=1)
    n_masked = torch.floor(gamma * lengths.float()).long()[:, None]
    return torch.where(rank < n_masked, mask_token, tokens)


def reorder(tokens: torch.Tensor, lengths: torch.Tensor, beta: float) -> torch.Tensor:
    """A random contiguous span of ``floor(beta * length)`` items of each row, shuffled."""
    start, size = _span(lengths, beta, minimum=0)
    pos = torch.arange(tokens.shape[1], device=tokens.device)[None].expand_as(tokens)
    inside = (pos >= start) & (pos < start + size)
    # Sort keys: positions outside the span keep theirs; inside, random keys in [start, start + size).
    key = torch.where(inside, start + torch.rand(tokens.shape, device=tokens.device) * size, pos.float())
    return tokens.gather(1, key.argsort(dim=1))


def augment(tokens: torch.Tensor, lengths: torch.Tensor, cfg: CL4SRecConfig, mask_token: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random augmentation (crop, mask or reorder) per row: (tokens, lengths)."""
    op = torch.randint(0, 3, (len(tokens), 1), device=tokens.device)
    cropped, crop_lengths = crop(tokens, lengths, cfg.crop_eta)
    out = torch.where(op == 0, cropped, torch.where(op == 1, mask(tokens, lengths, cfg.mask_gamma, mask_token),
                                                    reorder(tokens, lengths, cfg.reorder_beta)))
    return out, torch.where(op.squeeze(1) == 0, crop_lengths, lengths)


def nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """NT-Xent with dot-product similarity: a_i <-> b_i positives, every other view a negative."""
    z = torch.cat([a, b])
    n = len(a)
    logits = (z @ z.T / tau).fill_diagonal_(float("-inf"))
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(a.device)
    return F.cross_entropy(logits, labels)


@register
class CL4SRec(SASRec):
    """CL4SRec: SASRec + contrastive learning between crop / mask / reorder views (weight 0.1)."""

    name = "cl4srec"
    title = "CL4SRec"
    Config = CL4SRecConfig

    def __init__(self, config: CL4SRecConfig, context: ModelContext):
        super().__init__(config, context)
        self.mask_token = context.n_items + 1
        self.item_embedding = nn.Embedding(context.n_items + 2, config.hidden, padding_idx=0)  # + [mask]
        init_weights(self.item_embedding)

    def item_table(self) -> torch.Tensor:
        return self.item_embedding.weight[1 : self.mask_token]

    def _view(self, batch: SequenceBatch) -> torch.Tensor:
        tokens, lengths = augment(batch.tokens, batch.lengths, self.config, self.mask_token)
        return last_positions(self.transformer(self.item_embedding(tokens), lengths=lengths), lengths)

    def calculate_loss(self, batch: SequenceBatch) -> torch.Tensor:
        loss = super().calculate_loss(batch)
        if self.config.cl_weight > 0:
            loss = loss + self.config.cl_weight * nt_xent(self._view(batch), self._view(batch), self.config.tau)
        return loss
