"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional transformer trained with the cloze task.

RecBole's defaults (``BERT4Rec.yaml``): hidden 64, 2 layers, 2 heads, FFN 256, hidden and attention
dropout 0.2, mask_ratio 0.2, CE over all items, an output head Linear -> GELU -> LayerNorm and a
per-item output bias. Item tokens are ``index + 1``; ``n_items + 1`` is the [mask] token.

Training batches are the usual ones: each sequence is rebuilt whole (its inputs plus the last
target), a random ``mask_ratio`` of its items (at least one) is replaced by [mask], and the masked
items are predicted. Ranking appends [mask] after the history and scores all items at its output,
so the position table holds ``max_len + 1`` entries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mp4sr.data.batching import IGNORE, PAD, SequenceBatch
from mp4sr.models.base import ModelContext, SequentialRecommender, TransformerConfig, register
from mp4sr.models.layers import CausalTransformer, initialise, last_positions
from mp4sr.models.softmax import full_softmax_loss


class BERT4RecConfig(TransformerConfig):
    attn_dropout: float | None = Field(0.2, description="dropout of the attention weights; null: dropout")
    mask_ratio: float = Field(0.2, description="share of items masked for the cloze objective")


def append_token(tokens: torch.Tensor, lengths: torch.Tensor, token: torch.Tensor | int) -> torch.Tensor:
    """[B, L + 1] right-padded tokens with ``token`` (one per row, or one for all) after each sequence."""
    out = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], 1)], dim=1)
    out[torch.arange(len(tokens), device=tokens.device), lengths] = torch.as_tensor(token, device=tokens.device)
    return out


def cloze(tokens: torch.Tensor, ratio: float, mask_token: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each real item by ``mask_token`` with probability ``ratio`` (at least one per sequence);
    returns (masked tokens, labels = item index at masked positions, IGNORE elsewhere)."""
    real = tokens != PAD
    draw = torch.rand(tokens.shape, device=tokens.device).masked_fill(~real, 2.0)
    masked = draw < ratio
    masked |= (draw == draw.min(dim=1, keepdim=True).values) & real  # the smallest draw: at least one
    labels = torch.where(masked, tokens - 1, torch.full_like(tokens, IGNORE))
    return torch.where(masked, torch.full_like(tokens, mask_token), tokens), labels


@register
class BERT4Rec(SequentialRecommender):
    """BERT4Rec: bidirectional transformer, masked-item (cloze) training, [mask] appended to rank."""

    name = "bert4rec"
    title = "BERT4Rec"
    Config = BERT4RecConfig

    def __init__(self, config: BERT4RecConfig, context: ModelContext):
        super().__init__(config, context)
        self.mask_token = context.n_items + 1
        self.item_embedding = nn.Embedding(context.n_items + 2, config.hidden, padding_idx=0)
        # The causal transformer, run without the causal mask (see ``encode``).
        self.transformer = CausalTransformer.from_config(config, context.max_len + 1)
        self.head = nn.Sequential(nn.Linear(config.hidden, config.hidden), nn.GELU(), nn.LayerNorm(config.hidden))
        self.output_bias = nn.Parameter(torch.zeros(context.n_items))
        initialise(self, config.init)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, L, H]: every position attends to every real position (padding is masked out)."""
        return self.transformer(self.item_embedding(tokens), padding=tokens == PAD, causal=False)

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden) @ self.item_embedding.weight[1 : self.mask_token].T + self.output_bias

    def calculate_loss(self, batch: SequenceBatch) -> torch.Tensor:
        last_target = last_positions(batch.targets.unsqueeze(-1), batch.lengths).squeeze(-1)
        sequences = append_token(batch.tokens, batch.lengths, last_target + 1)
        masked, labels = cloze(sequences, self.config.mask_ratio, self.mask_token)
        keep = labels != IGNORE
        return full_softmax_loss(self.head(self.encode(masked)[keep]), self.item_embedding.weight[1 : self.mask_token],
                                 labels[keep], bias=self.output_bias)

    def full_sort_predict(self, batch: SequenceBatch) -> torch.Tensor:
        tokens = append_token(batch.tokens, batch.lengths, self.mask_token)
        return self.scores(last_positions(self.encode(tokens), batch.lengths + 1))
