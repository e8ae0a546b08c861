"""The declared interface of models, and the registry that maps names to classes.

A model is an ``nn.Module`` with a pydantic ``Config``, built from that config and a ``ModelContext``
(what it may know of the data). Every model is a ``SequentialRecommender``: ``calculate_loss(batch)``
for training, ``full_sort_predict(batch)`` -> scores of all items. What a model can do beyond that it
declares by the classes it derives from, and generic code asks with ``isinstance`` / ``issubclass``:

- ``Factorised``: scores are ``user_vectors(batch) @ item_vectors().T`` (ranking can go by chunks of items);
- ``ContentModel``: reads item content (text and image vectors): the dataset's feature stores come in
  ``ModelContext.features``, and ``modalities`` says which it reads;
- ``ExtensibleCatalogue``: a content model that scores items from content tables it holds outside the
  state dict, so items added after training can be ranked (``set_item_tables``);
- ``Pretrainable``: has a pre-training and a fine-tuning stage (``params.stage``), each with its own
  training settings (``stage_defaults``), and starts fine-tuning from a pre-trained encoder
  (``load_pretrained``).
"""

from __future__ import annotations

from abc import ABC, ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
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
    norm_first: bool = Field(False, description="pre-LN layers and a final LayerNorm (the original SASRec's and "
                             "RecTools'); false: a LayerNorm of the input, then post-LN layers (RecBole's)")
    positions: Literal["forward", "from_end"] = Field(
        "forward", description="number each sequence's items from its first (RecBole's) or from its last "
        "(from_end: the latest item always at position 0, as the original SASRec's left padding and RecTools' "
        "inverse positions give)")
    block: Literal["standard", "sasrec"] = Field(
        "standard", description="the transformer layer: PyTorch's (GELU feed-forward, in the form norm_first "
        "picks) or the original SASRec's (sasrec: the query normalised, keys and values not, residuals from the "
        "normalised input, ReLU feed-forward; RecTools' layer; needs norm_first=true)")
    padding_sink: bool = Field(False, description="with block=sasrec: every position also attends to the zero "
                               "inputs that padding each sequence on the left to max_len would give, keys and values "
                               "the attention's biases (RecTools' SASRec, which masks no padding key)")
    init: Literal["normal", "xavier"] = Field(
        "normal", description="initialisation: N(0, 0.02) weights (BERT's, RecBole's) or Xavier-normal weight "
        "matrices and embeddings (xavier: RecTools')")

    @model_validator(mode="after")
    def _sasrec_block_is_pre_ln(self):
        if self.block == "sasrec" and not self.norm_first:
            raise ValueError("block 'sasrec' is the original SASRec's pre-LN layer: set norm_first=true with it")
        if self.padding_sink and self.block != "sasrec":
            raise ValueError("padding_sink is a form of block 'sasrec': set block=sasrec with it")
        return self


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
    features: Any = None  # modality -> FeatureStore or ItemTable, for content models
    dataset: str | None = None  # the dataset's name, for messages


Stage = Literal["pretrain", "finetune"]  # the two stages of a Pretrainable model (``params.stage``)
STAGES: tuple[Stage, ...] = ("pretrain", "finetune")


class SequentialRecommender(nn.Module, metaclass=ABCMeta):
    """What every model is: trained on next-item batches, ranks all items after a sequence."""

    name: ClassVar[str] = ""  # the registry name (`mp4sr train --model NAME`)
    title: ClassVar[str] = ""  # the name in tables and reports (e.g. 'SASRec')
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    trainable: ClassVar[bool] = True  # False: fitted when built (popularity), no training epochs

    def __init__(self, config: ModelConfig, context: ModelContext):
        super().__init__()
        self.config = config
        self.n_items = context.n_items
        self.max_len = context.max_len

    @abstractmethod
    def calculate_loss(self, batch: SequenceBatch) -> torch.Tensor:
        """The training loss of one batch (a scalar)."""

    def data_settings(self) -> dict[str, Any]:
        """Settings the model chose from the data when it was built (such as the modalities a content
        model reads when its config leaves them unset). A checkpoint records them, so that serving rebuilds
        the same model and a fine-tuning that starts from it keeps them."""
        return {}

    def param_groups(self) -> list[dict]:
        """The optimiser's parameter groups; a group's ``lr_scale`` multiplies ``train.lr``."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    @abstractmethod
    def full_sort_predict(self, batch: SequenceBatch) -> torch.Tensor:
        """Scores [B, n_items] of every item as the next item after each sequence."""


class Factorised(ABC):
    """A model whose scores are a dot product of a user vector and an item vector."""

    @abstractmethod
    def user_vectors(self, batch: SequenceBatch) -> torch.Tensor:
        """[B, D] one vector per sequence (after its last item)."""

    @abstractmethod
    def item_vectors(self) -> torch.Tensor:
        """[n_items, D] one vector per item."""

    def full_sort_predict(self, batch: SequenceBatch) -> torch.Tensor:
        return self.user_vectors(batch) @ self.item_vectors().T


class ContentModel(ABC):
    """A model that reads item content: built with the dataset's feature stores in ``ModelContext.features``.
    ``modalities`` holds the modalities it reads (chosen when built: its settings, else what the data has)."""

    modalities: list[str]


class ExtensibleCatalogue(ContentModel):
    """A content model that scores items from content tables held outside its state dict: items added
    after training (their content attached with ``set_item_tables``) are ranked without retraining."""

    tables: dict[str, Any]  # modality -> ItemTable

    @abstractmethod
    def set_item_tables(self, tables: dict[str, Any]) -> None:
        """Attach (or replace) the item content of each modality: feature stores or ItemTables."""


class Pretrainable(ABC):
    """A model with two stages, chosen by ``params.stage``: pre-training (its own objective, on content)
    and fine-tuning, which starts from a pre-trained encoder."""

    # Each stage's settings over the defaults ({"params": {"stage": ...}, "train": {...}}), what
    # `mp4sr pretrain`, `finetune`, `run` and `experiment` apply under the user's own.
    stage_defaults: ClassVar[dict[Stage, dict[str, Any]]]

    def calculate_loss(self, batch: SequenceBatch) -> torch.Tensor:
        """The objective of the stage ``params.stage`` names."""
        return self.pretrain_loss(batch) if self.config.stage == "pretrain" else self.finetune_loss(batch)

    @abstractmethod
    def pretrain_loss(self, batch: SequenceBatch) -> torch.Tensor:
        """The pre-training objective."""

    @abstractmethod
    def finetune_loss(self, batch: SequenceBatch) -> torch.Tensor:
        """The fine-tuning (next-item) objective."""

    @abstractmethod
    def load_pretrained(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """Start from the weights of a pre-training checkpoint; returns the names it did not hold."""


REGISTRY: dict[str, type[SequentialRecommender]] = {}


def register(cls: type[SequentialRecommender]) -> type[SequentialRecommender]:
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"model name {cls.name!r} is empty or taken")
    REGISTRY[cls.name] = cls
    return cls


def reads_content(model: "SequentialRecommender | type[SequentialRecommender]") -> bool:
    """Whether a model (or model class) reads item content (needs the dataset's feature stores)."""
    return issubclass(model if isinstance(model, type) else type(model), ContentModel)


def can_add_items(model: "SequentialRecommender | type[SequentialRecommender]") -> bool:
    """Whether a model (or model class) can rank items added after training (``ExtensibleCatalogue``)."""
    return issubclass(model if isinstance(model, type) else type(model), ExtensibleCatalogue)


def is_pretrainable(model: "str | SequentialRecommender | type[SequentialRecommender]") -> bool:
    """Whether a model (a name, an instance or a class) has a pre-training stage."""
    cls = model_class(model) if isinstance(model, str) else model if isinstance(model, type) else type(model)
    return issubclass(cls, Pretrainable)


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
