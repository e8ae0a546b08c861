"""GRU4Rec (Hidasi et al., ICLR 2016; Tan et al. 2016) as RecBole implements it, cross-entropy over all items.

RecBole's defaults (``GRU4Rec.yaml``): embedding_size 64, hidden_size 128, num_layers 1,
dropout_prob 0.3 (on the input embeddings), loss_type CE; Xavier initialisation.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from mp4sr.data.batching import SequenceBatch
from mp4sr.models.base import ModelContext, Factorised, SequentialRecommender, register
from mp4sr.models.sasrec import SASRec
from mp4sr.models.softmax import HistoryNegativesConfig


class GRU4RecConfig(HistoryNegativesConfig):  # its loss is SASRec's, which reads history_negatives
    embedding: int = Field(64, description="width of item embeddings")
    hidden: int = Field(128, description="GRU state width")
    layers: int = Field(1, description="GRU layers")
    dropout: float = Field(0.3, description="dropout of the input embeddings")


@register
class GRU4Rec(Factorised, SequentialRecommender):
    """GRU4Rec: a GRU over ID embeddings, projected back to the embedding space; CE over all items.

    A GRU is left-to-right, so with right padding the state at every real position depends only on
    the items up to it: one pass over a whole sequence gives the loss of every prefix.
    """

    name = "gru4rec"
    title = "GRU4Rec"
    Config = GRU4RecConfig

    def __init__(self, config: GRU4RecConfig, context: ModelContext):
        super().__init__(config, context)
        self.item_embedding = nn.Embedding(context.n_items + 1, config.embedding, padding_idx=0)
        self.dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(config.embedding, config.hidden, config.layers, bias=False, batch_first=True)
        self.dense = nn.Linear(config.hidden, config.embedding)
        self._init_weights()
        self.register_buffer("negatives_bias", config.negatives_bias(context.item_counts), persistent=False)

    def _init_weights(self) -> None:
        """RecBole: Xavier normal for the embedding, Xavier uniform for the GRU weights."""
        nn.init.xavier_normal_(self.item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        for name, weight in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(weight)

    def encode(self, batch: SequenceBatch) -> torch.Tensor:
        """[B, L, E] output at every position."""
        out, _ = self.gru(self.dropout(self.item_embedding(batch.tokens)))
        return self.dense(out)

    def item_table(self) -> torch.Tensor:
        return self.item_embedding.weight[1:]

    # The objective and the scoring are SASRec's: cross-entropy of encode() against item_table().
    sampler = None
    calculate_loss = SASRec.calculate_loss
    user_vectors = SASRec.user_vectors
    item_vectors = SASRec.item_vectors
