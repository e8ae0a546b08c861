"""The small interface every model implements, and the registry that maps names to classes.

A model is an ``nn.Module`` with a pydantic ``Config``; it is built from that config and a
``ModelContext`` (what it may know of the data), and implements two methods:
``calculate_loss(batch)`` for training and ``full_sort_predict(batch)`` -> scores of all items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from mp4sr.data.batching import SequenceBatch
from mp4sr.errors import ConfigError


class ModelConfig(BaseModel):
    """Base of model configs: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")


class TransformerConfig(ModelConfig):
    """The settings of a transformer model's encoder, named alike in every model (``CausalTransformer.
    from_config`` reads them); a model with other defaults declares those fields again."""

    hidden: int = Field(64, description="width of item representations and of the transformer")
    layers: int = Field(2, description="transformer layers")
    heads: int = Field(2, description="attention heads per layer")
    ffn: int = Field(256, description="transformer feed-forward width")
    dropout: float = Field(0.2, description="dropout of embeddings and layers")
    attn_dropout: float | None = Field(None, description="dropout of the attention weights; null: dropout")
    ffn_dropout: float | None = Field(None, description="dropout inside the feed-forward block; null: dropout")


# Field metadata of settings that only one stage of a pre-trained model reads, e.g.
# ``Field(True, description=..., json_schema_extra=PRETRAINING)``: `mp4sr run` sends such a setting to
# its stage only and refuses it where the other stage would silently ignore it.
PRETRAINING = {"stage": "pretrain"}
FINETUNING = {"stage": "finetune"}


def setting_stage(config: type[BaseModel], name: str) -> str | None:
    """'pretrain' or 'finetune' for a setting only that stage reads, None for one both read."""
    field_info = config.model_fields.get(name)
    extra = field_info.json_schema_extra if field_info is not None else None
    return extra.get("stage") if isinstance(extra, dict) else None


@dataclass
class ModelContext:
    """What a model may know of the data when it is built."""

    n_items: int
    max_len: int = 50
    item_counts: np.ndarray | None = None  # training interactions of each item
    features: Any = None  # a FeatureStore (or dict of stores) for content-based models
    extras: dict[str, Any] = field(default_factory=dict)


class SequentialRecommender(nn.Module):
    name: ClassVar[str] = ""
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    trainable: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False  # reads item content: the dataset's feature stores come in the context

    def __init__(self, config: ModelConfig, context: ModelContext):
        super().__init__()
        self.config = config
        self.n_items = context.n_items
        self.max_len = context.max_len

    def calculate_loss(self, batch: SequenceBatch) -> torch.Tensor:
        raise NotImplementedError

    def data_settings(self) -> dict[str, Any]:
        """Settings the model chose from the data when it was built (such as the modalities a content
        model reads when its config leaves them unset). A checkpoint records them, so that serving rebuilds
        the same model and a fine-tuning that starts from it keeps them."""
        return {}

    def param_groups(self) -> list[dict]:
        """The optimiser's parameter groups; a group's ``lr_scale`` multiplies ``train.lr``."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def full_sort_predict(self, batch: SequenceBatch) -> torch.Tensor:
        """Scores [B, n_items] of every item as the next item after each sequence."""
        raise NotImplementedError


REGISTRY: dict[str, type[SequentialRecommender]] = {}


def register(cls: type[SequentialRecommender]) -> type[SequentialRecommender]:
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"model name {cls.name!r} is empty or taken")
    REGISTRY[cls.name] = cls
    return cls


def can_add_items(model: "SequentialRecommender | type[SequentialRecommender]") -> bool:
    """Whether a model scores items from their content tables, so that items added after training
    (their content attached with ``set_item_tables``) can be recommended without retraining."""
    return hasattr(model, "set_item_tables")


def model_class(name: str) -> type[SequentialRecommender]:
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def parse_model_config(name: str, params: dict | None) -> ModelConfig:
    try:
        return model_class(name).Config(**(params or {}))
    except ValidationError as e:
        raise ConfigError(f"invalid settings for model {name!r}:\n{e}") from None


def build_model(name: str, params: dict | None, context: ModelContext) -> SequentialRecommender:
    cls = model_class(name)
    return cls(parse_model_config(name, params), context)
