"""Popularity: every user gets the items with the most training interactions."""

from __future__ import annotations

import numpy as np
import torch

from mp4sr.data.batching import SequenceBatch
from mp4sr.models.base import ModelConfig, ModelContext, SequentialRecommender, register


class PopConfig(ModelConfig):
    pass


@register
class Pop(SequentialRecommender):
    """Popularity: items ranked by their number of training interactions."""

    name = "pop"
    title = "Pop"
    Config = PopConfig
    trainable = False

    def __init__(self, config: PopConfig, context: ModelContext):
        super().__init__(config, context)
        counts = context.item_counts if context.item_counts is not None else np.zeros(context.n_items)
        self.register_buffer("counts", torch.as_tensor(counts, dtype=torch.float32))

    def calculate_loss(self, batch: SequenceBatch) -> torch.Tensor:
        raise TypeError("pop is fitted when built (its counts are the training interactions): it has no loss")

    def full_sort_predict(self, batch: SequenceBatch) -> torch.Tensor:
        return self.counts[None, :].expand(len(batch), -1)
