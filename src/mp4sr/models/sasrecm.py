"""Multimodal SASRec: SASRec whose item embedding adds linear projections of the item's content.

The "SASRec + features" baseline of the MP4SR, UniSRec and MISSRec papers: item i is represented by
``E_id[i] + sum_m W_m mean(x_i^m)`` on the input and the output side (m in text, image; x_i^m the
item's vectors of modality m, mean-pooled over the present ones, an absent modality adds nothing).
The encoder and the loss are SASRec's, with its RecBole defaults (hidden 64, 2 layers, 2 heads,
FFN 256, dropout 0.5, CE over all items).

This module also holds the pieces the feature-based baselines share (``feature_tables``,
``ContentProjection``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from mp4sr.data.batching import SequenceBatch
from mp4sr.models.base import ContentModel, ModelContext, register
from mp4sr.models.layers import init_weights
from mp4sr.models.modalities import choose_modalities, dataset_name
from mp4sr.models.mp4sr import ItemTable
from mp4sr.models.sasrec import SASRec, SASRecConfig

Modality = Literal["text", "image"]


def feature_tables(context: ModelContext, modalities: list[str] | None, model: str) -> dict[str, ItemTable]:
    """The context's feature stores (or ItemTables) of ``modalities`` (None: those the data has), as ItemTables."""
    found = context.features or {}
    chosen = choose_modalities(model, modalities, found, dataset_name(context))
    return {m: found[m] if isinstance(found[m], ItemTable) else ItemTable.from_store(found[m]) for m in chosen}


def mean_pooled(table: ItemTable) -> torch.Tensor:
    """[n, d] mean of each item's present vectors (zeros for an item with none)."""
    mask = table.mask.unsqueeze(-1).float()
    return (table.vectors.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class ContentProjection(nn.Module):
    """Per modality, a linear projection of the items' mean-pooled vectors to ``hidden``.

    The pooled vectors are fixed buffers, outside the state dict (they are data, not weights).
    """

    def __init__(self, tables: dict[str, ItemTable], hidden: int):
        super().__init__()
        self.modalities = list(tables)
        self.proj = nn.ModuleDict({m: nn.Linear(t.vectors.shape[-1], hidden) for m, t in tables.items()})
        for m, t in tables.items():
            self.register_buffer(f"pooled_{m}", mean_pooled(t), persistent=False)
            self.register_buffer(f"present_{m}", t.present, persistent=False)

    def per_modality(self, items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """([..., M, hidden] projections, [..., M] presence) of ``items`` (all items when None)."""
        pick = (lambda x: x) if items is None else (lambda x: x[items])  # noqa: E731
        out = [self.proj[m](pick(getattr(self, f"pooled_{m}"))) for m in self.modalities]
        present = torch.stack([pick(getattr(self, f"present_{m}")) for m in self.modalities], dim=-1)
        return torch.stack(out, dim=-2) * present.unsqueeze(-1), present

    def forward(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """[..., hidden]: the sum of the modalities' projections."""
        return self.per_modality(items)[0].sum(-2)


class SASRecMConfig(SASRecConfig):
    modalities: list[Modality] | None = Field(None, description="the item content projected and added to the ID "
                                              "embeddings; unset: those the data has")
    id_embedding: bool = Field(True, description="item-ID embeddings beside the content (transductive); "
                               "false: content only (inductive)")


@register
class SASRecM(ContentModel, SASRec):
    """Multimodal SASRec: ID embedding + linear projections of pooled text and image vectors."""

    name = "sasrecm"
    title = "SASRecM"
    Config = SASRecMConfig

    def __init__(self, config: SASRecMConfig, context: ModelContext):
        super().__init__(config, context)
        self.content = ContentProjection(feature_tables(context, config.modalities, self.name), config.hidden)
        self.content.apply(init_weights)
        self.modalities = list(self.content.modalities)
        if not config.id_embedding:  # the ID table stays zero and untrained: items are their content
            nn.init.zeros_(self.item_embedding.weight)
            self.item_embedding.weight.requires_grad_(False)

    def data_settings(self) -> dict:
        return {"modalities": list(self.content.modalities)}

    def item_table(self) -> torch.Tensor:
        return self.item_embedding.weight[1:] + self.content()

    def encode(self, batch: SequenceBatch) -> torch.Tensor:
        table = torch.cat([self.item_embedding.weight[:1], self.item_table()])  # row 0: padding, zero
        return self.transformer(table[batch.tokens])
