"""Multimodal SASRec: SASRec whose item embedding adds the item's content.

The "SASRec + features" baseline of the MP4SR, UniSRec and MISSRec papers: item i is represented by
``E_id[i] + sum_m W_m mean(x_i^m)`` on the input and the output side (m in text, image; x_i^m the
item's vectors of modality m, mean-pooled over the present ones, an absent modality adds nothing).
The pooling and the map to the hidden size are the content part of ``models.items``: ``mean`` +
``linear`` by default, ``params.pooling=attention params.adaptor=moe`` for MP4SR's item encoder.
The encoder and the loss are SASRec's, with its RecBole defaults (hidden 64, 2 layers, 2 heads,
FFN 256, dropout 0.5, CE over all items).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from mp4sr.data.batching import SequenceBatch
from mp4sr.models.base import ContentModel, ModelContext, register
from mp4sr.models.items import Adaptor, ContentConfig, ContentProjection, Pooling, described, feature_tables
from mp4sr.models.layers import initialise
from mp4sr.models.sasrec import SASRec, SASRecConfig

Modality = Literal["text", "image"]


class SASRecMConfig(ContentConfig, SASRecConfig):
    pooling: Pooling = Field("mean", description=described("pooling"))
    adaptor: Adaptor = Field("linear", description=described("adaptor"))
    modalities: list[Modality] | None = Field(None, description="the item content projected and added to the ID "
                                              "embeddings; unset: those the data has")
    id_embedding: bool = Field(True, description="item-ID embeddings beside the content (transductive); "
                               "false: content only (inductive)")


@register
class SASRecM(ContentModel, SASRec):
    """Multimodal SASRec: ID embedding + each modality's content (by default a Linear of the mean vector)."""

    name = "sasrecm"
    title = "SASRecM"
    Config = SASRecMConfig

    def __init__(self, config: SASRecMConfig, context: ModelContext):
        super().__init__(config, context)
        self.content = ContentProjection(feature_tables(context, config.modalities, self.name), config.hidden, config)
        initialise(self.content, config.init)
        self.modalities = list(self.content.modalities)
        if not config.id_embedding:  # the ID table stays zero and untrained: items are their content
            nn.init.zeros_(self.item_embedding.weight)
            self.item_embedding.weight.requires_grad_(False)

    def data_settings(self) -> dict:
        return {"modalities": list(self.content.modalities)}

    def item_table(self) -> torch.Tensor:
        return self.item_embedding.weight[1:] + self.content()

    def encode(self, batch: SequenceBatch, table: torch.Tensor | None = None) -> torch.Tensor:
        table = self.item_table() if table is None else table
        rows = torch.cat([table.new_zeros(1, table.shape[1]), table])  # row 0: padding
        return self.transformer(rows[batch.tokens], lengths=batch.lengths)
