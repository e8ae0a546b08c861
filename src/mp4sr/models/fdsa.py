"""FDSA (Zhang et al., IJCAI 2019): feature-level and item-level self-attention, concatenated.

Two causal transformers: the item-level one over ID embeddings (SASRec's), the feature-level one
over each item's content, where an item's modalities (the content parts of ``models.items``: by
default the projected, mean-pooled text and image vectors) are merged by vanilla attention. The
outputs at each position are concatenated and mapped back to the hidden size (Linear 2H -> H,
LayerNorm, dropout), then scored against the ID embeddings with CE over all items. RecBole /
UniSRec-baseline defaults: hidden 64, 2 layers, 2 heads, FFN 256, hidden and attention dropout 0.5.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from mp4sr.data.batching import PAD, SequenceBatch
from mp4sr.errors import ConfigError
from mp4sr.models.base import ContentModel, ModelContext, register
from mp4sr.models.items import AttentionPooling, ContentProjection, PoolScorer, feature_tables
from mp4sr.models.layers import CausalTransformer, initialise
from mp4sr.models.sasrec import SASRec
from mp4sr.models.sasrecm import SASRecMConfig


class FDSAConfig(SASRecMConfig):
    """SASRecM's settings (the modalities and their content part); ``pool_scorer`` also scores the vanilla
    attention over the modalities."""

    pool_scorer: PoolScorer = Field(
        "linear", description="score of the vanilla attention over the modalities (and of an attention pooling): "
        "'linear' (two Linear layers, as MP4SR's pooling) or 'mlp' (RecBole's VanillaAttention: a ReLU between them)")


@register
class FDSA(ContentModel, SASRec):
    """FDSA: item-level (ID) and feature-level (content) causal transformers, concatenated."""

    name = "fdsa"
    title = "FDSA"
    Config = FDSAConfig

    def __init__(self, config: FDSAConfig, context: ModelContext):
        if not config.id_embedding:
            raise ConfigError("fdsa scores items by their ID embeddings (its item-level branch): "
                              "params.id_embedding must stay true")
        if config.item_dropout_input:
            raise ConfigError("fdsa reads its input items from two tables (IDs and content), so params.item_dropout "
                              "drops the scoring table only: params.item_dropout_input must stay false")
        super().__init__(config, context)  # the item-level branch
        self.content = ContentProjection(feature_tables(context, config.modalities, self.name), config.hidden, config)
        self.modalities = list(self.content.modalities)
        # vanilla attention over the modalities
        self.feature_attention = AttentionPooling(config.hidden, config.hidden, config.pool_scorer)
        self.feature_transformer = CausalTransformer.from_config(config, context.max_len)
        self.concat = nn.Linear(2 * config.hidden, config.hidden)
        self.out_norm = nn.LayerNorm(config.hidden, eps=1e-12)
        self.out_dropout = nn.Dropout(config.dropout)
        initialise(self, config.init)

    def data_settings(self) -> dict:
        return {"modalities": list(self.content.modalities)}

    def feature_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, L, H] content representation of each item (zero at padding)."""
        vectors, present = self.content.per_modality((tokens - 1).clamp(min=0))
        B, L, M, H = vectors.shape
        merged = self.feature_attention(vectors.reshape(B * L, M, H), present.reshape(B * L, M)).view(B, L, H)
        return merged * (tokens != PAD).unsqueeze(-1)

    def encode(self, batch: SequenceBatch) -> torch.Tensor:
        items = self.transformer(self.item_embedding(batch.tokens), lengths=batch.lengths)
        features = self.feature_transformer(self.feature_sequence(batch.tokens), lengths=batch.lengths)
        return self.out_dropout(self.out_norm(self.concat(torch.cat([items, features], dim=-1))))
