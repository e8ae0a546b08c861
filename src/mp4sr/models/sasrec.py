"""SASRec (Kang & McAuley, 2018) with cross-entropy over all items, RecBole's defaults."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mp4sr.data.batching import IGNORE, SequenceBatch
from mp4sr.models.base import Factorised, ModelContext, SequentialRecommender, TransformerConfig, register
from mp4sr.models.layers import CausalTransformer, initialise, last_positions
from mp4sr.models.sampled import LossConfig, sampled_softmax_loss
from mp4sr.models.softmax import full_softmax_loss


class SASRecConfig(LossConfig, TransformerConfig):
    dropout: float = Field(0.5, description="dropout of embeddings and layers (RecBole: hidden_dropout_prob)")
    attn_dropout: float | None = Field(0.5, description="dropout of attention weights (RecBole: attn_dropout_prob); "
                                       "null: dropout")
    item_dropout_input: bool = Field(False, description="item_dropout drops the item table once a step for the "
                                     "input sequences as well as for scoring (RecTools' item net); false: scoring only")


@register
class SASRec(Factorised, SequentialRecommender):
    """SASRec: ID embeddings and a causal transformer, cross-entropy over all items."""

    name = "sasrec"
    title = "SASRec"
    Config = SASRecConfig
    sampler = None  # a CandidateSampler with params.loss=sampled (subclasses with their own __init__ have none)

    def __init__(self, config: SASRecConfig, context: ModelContext):
        super().__init__(config, context)
        self.item_embedding = nn.Embedding(context.n_items + 1, config.hidden, padding_idx=0)
        self.transformer = CausalTransformer.from_config(config, context.max_len)
        initialise(self, config.init)
        self.sampler = config.sampler(context)
        self.register_buffer("negatives_bias", config.negatives_bias(context.item_counts), persistent=False)

    def encode(self, batch: SequenceBatch, table: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L, H] hidden states at every position; ``table``: the [n_items, H] item rows the input
        sequences are read from (default: the model's own)."""
        if table is None:
            return self.transformer(self.item_embedding(batch.tokens), lengths=batch.lengths)
        rows = torch.cat([table.new_zeros(1, table.shape[1]), table])  # row 0: padding
        return self.transformer(rows[batch.tokens], lengths=batch.lengths)

    def item_table(self) -> torch.Tensor:
        return self.item_embedding.weight[1:]

    def calculate_loss(self, batch: SequenceBatch) -> torch.Tensor:
        table = self.item_table()
        dropped = getattr(self.config, "item_dropout", 0.0)  # GRU4Rec shares this loss and has no such setting
        if dropped:
            table = F.dropout(table, dropped, self.training)
        hidden = self.encode(batch, table) if getattr(self.config, "item_dropout_input", False) else self.encode(batch)
        keep = batch.targets != IGNORE
        targets = batch.targets[keep]
        if self.sampler is not None:
            cands = self.sampler.sample(targets)
            return sampled_softmax_loss(hidden[keep] @ table[cands.items].T, cands)
        return full_softmax_loss(hidden[keep], table, targets, bias=self.negatives_bias,
                                 exclude=self.config.loss_exclusions(batch, keep))

    def user_vectors(self, batch: SequenceBatch) -> torch.Tensor:
        return last_positions(self.encode(batch), batch.lengths)

    def item_vectors(self) -> torch.Tensor:
        return self.item_table()
