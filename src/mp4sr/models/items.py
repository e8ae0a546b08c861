"""Item representations, composed from parts: the content of each modality, and the item's ID.

The parts, in the order they are built:

- ``ItemTable``: one modality of a catalogue, [n, k, d] vectors with a [n, k] mask of the present ones
  (data, never weights: it stays outside the state dict). ``feature_tables`` gives the ItemTables of the
  modalities a model reads (its settings, else what the data has; see ``modalities``).
- the content part of one modality: a **pooling** over the item's vectors, ``attention`` (trained,
  ``AttentionPooling``, scorer ``linear`` | ``mlp``) or ``mean`` (of the present vectors, ``MeanPooling``),
  then an **adaptor** to the hidden size, ``moe`` (``MoEAdaptor``), ``linear``, or ``whitening`` (UniSRec's
  official adaptor, ``WhiteningAdaptor``). ``ContentConfig`` holds these choices; the configs of MP4SR,
  UniSRec, SASRecM and FDSA derive from it, each with its own defaults (MP4SR, UniSRec: attention + moe;
  SASRecM, FDSA: mean + linear).
- the ID part (``IDEmbedding``): one learned vector per item known in training; items added after
  training (index >= the trained rows) get zero rows, so a model that adds the ID part to content still
  scores them by their content.

How the parts combine is each model's architecture, and stays in its module:

- MP4SR (and UniSRec, text only): ``ContentEncoders``, one ``ContentEncoder`` per modality (an item
  without a vector of that modality takes a learned 'missing' input), over tables held outside the state
  dict so the catalogue can grow; each modality is its own stream through the one shared transformer, and
  in fine-tuning the ID part is added on the input side (LayerNorm(Z + P + E_id)) and to each modality's
  output vector (normalise(z_j + E_id_j)).
- SASRecM: the item is E_id + the sum of its modalities' content (``ContentProjection``; a modality the
  item lacks adds nothing), on the input and the output side of SASRec's transformer.
- FDSA: the modalities' content (``ContentProjection.per_modality``) is merged by attention over the
  modalities and runs through a second transformer beside the ID one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mp4sr.errors import ConfigError
from mp4sr.models.base import ExtensibleCatalogue, ModelConfig, ModelContext
from mp4sr.models.modalities import MODALITIES, choose_modalities, dataset_name

Pooling = Literal["attention", "mean"]
PoolScorer = Literal["linear", "mlp"]
Adaptor = Literal["moe", "linear", "whitening"]


# ---------------------------------------------------------------------------------------------- item content


@dataclass
class ItemTable:
    """One modality of a catalogue: vectors [n, k, d], mask [n, k] of present vectors."""

    vectors: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_store(cls, store) -> "ItemTable":
        vectors = torch.from_numpy(np.asarray(store.vectors, dtype=np.float32))
        mask = torch.from_numpy(np.array(store.mask, dtype=bool))
        if vectors.ndim == 2:
            vectors, mask = vectors[:, None], mask.reshape(-1, 1)
        return cls(vectors, mask)

    @classmethod
    def of(cls, table) -> "ItemTable":
        """``table`` itself if it is an ItemTable, else the ItemTable of a feature store."""
        return table if isinstance(table, ItemTable) else cls.from_store(table)

    @property
    def present(self) -> torch.Tensor:
        return self.mask.any(1)

    def __len__(self) -> int:
        return self.vectors.shape[0]


def feature_tables(context: ModelContext, modalities: list[str] | None, model: str,
                   readable: tuple[str, ...] = MODALITIES) -> dict[str, ItemTable]:
    """The context's feature stores (or ItemTables) of ``modalities`` (None: those of ``readable`` the data
    has), as ItemTables."""
    found = context.features or {}
    chosen = choose_modalities(model, modalities, found, dataset_name(context), readable)
    return {m: ItemTable.of(found[m]) for m in chosen}


# ---------------------------------------------------------------------------------------------- the settings


class ContentConfig(ModelConfig):
    """How the content of one modality becomes an item vector: pooling over the item's vectors, then an
    adaptor to ``hidden``. A model whose defaults differ declares those fields again, with the same
    descriptions (``described``)."""

    pooling: Pooling = Field("attention", description="pooling over an item's vectors of a modality: 'attention' "
                             "(trained weights) or 'mean' (of the present vectors)")
    pool_hidden: int = Field(64, description="attention pooling: d -> pool_hidden -> 1")
    pool_scorer: PoolScorer = Field(
        "linear", description="attention pooling score: 'linear' (the paper's) or 'mlp' (a ReLU after the first layer)")
    adaptor: Adaptor = Field("moe", description="map of the pooled vector to the hidden size: 'moe' (mixture of "
                             "experts, each Linear + LayerNorm, softmax gate), 'linear' (one Linear) or 'whitening' "
                             "(UniSRec's official adaptor: parametric-whitening experts (x - b_k) W_k, noisy gate)")
    experts: int = Field(8, description="experts of each modality's MoE or whitening adaptor")
    adaptor_dropout: float = Field(0.2, description="dropout inside the MoE or whitening adaptor")


def described(name: str) -> str:
    """The description of a ContentConfig setting, for a model that declares it again with its own default."""
    return ContentConfig.model_fields[name].description


# ---------------------------------------------------------------------------------------------- poolings


class AttentionPooling(nn.Module):
    """alpha = softmax(score(x)) over an item's vectors; padding rows get no weight.

    ``linear`` (the paper's, and its authors' code): score(x) = (x W1 + b1) W2 + b2, linear in x, so
    ``hidden`` adds no expressive power and the weights of x and -x move in opposite directions.
    ``mlp`` (RecBole's ``VanillaAttention``): score(x) = ReLU(x W1 + b1) W2 + b2. Both have the same
    weights (``proj``, ``score``), so checkpoints load under either."""

    def __init__(self, dim: int, hidden: int = 64, scorer: PoolScorer = "linear"):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1)
        self.nonlinear = scorer == "mlp"

    def weights(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """alpha [..., k] of the k vectors x [..., k, d]; all zero where ``mask`` holds none."""
        h = self.proj(x)
        logits = self.score(F.relu(h) if self.nonlinear else h).squeeze(-1).masked_fill(~mask, float("-inf"))
        return torch.softmax(logits, dim=-1).nan_to_num(0.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (self.weights(x, mask).unsqueeze(-1) * x).sum(-2)


class MeanPooling(nn.Module):
    """The mean of an item's present vectors (zeros for an item with none); no weights."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weight = mask.unsqueeze(-1).float()
        return (x.float() * weight).sum(-2) / weight.sum(-2).clamp(min=1.0)


def make_pooling(settings: ContentConfig, dim: int) -> nn.Module:
    """The pooling ``settings.pooling`` names, over vectors of ``dim``: ``forward(x [..., k, d], mask [..., k])``."""
    if settings.pooling == "attention":
        return AttentionPooling(dim, settings.pool_hidden, settings.pool_scorer)
    if settings.pooling == "mean":
        return MeanPooling()
    raise ConfigError(f"unknown pooling {settings.pooling!r}")


# ---------------------------------------------------------------------------------------------- adaptors


class MoEAdaptor(nn.Module):
    """z = sum_k g_k(e) LayerNorm_k(Dropout(Linear_k(e))), g = softmax(e W_g); experts run as one matmul."""

    def __init__(self, dim: int, hidden: int, experts: int = 8, dropout: float = 0.2):
        super().__init__()
        self.experts, self.hidden = experts, hidden
        self.linear = nn.Linear(dim, hidden * experts)
        self.dropout = nn.Dropout(dropout)
        self.norm_weight = nn.Parameter(torch.ones(experts, hidden))
        self.norm_bias = nn.Parameter(torch.zeros(experts, hidden))
        self.gate = nn.Linear(dim, experts, bias=False)

    def forward(self, e: torch.Tensor, absent: torch.Tensor | None = None,
                missing: torch.Tensor | None = None) -> torch.Tensor:
        """``z`` of ``e`` [..., d]. With ``absent`` [..., 1] and ``missing`` [d]: ``e`` is a constant (content
        vectors), and its ``absent`` rows stand for the learned input ``missing``; the result and the
        gradients are those of ``forward(torch.where(absent, missing, e))``, but the linear map computes no
        input gradient for the constant rows, which over a whole catalogue costs as much as the map itself."""
        if absent is None:
            linear, gate_input = self.linear(e), e
        else:
            linear = self.linear(torch.where(absent, missing.detach(), e))
            # missing's gradient through the absent rows only; the term added is exactly zero
            linear = linear + absent * F.linear(missing - missing.detach(), self.linear.weight.detach())
            gate_input = torch.where(absent, missing, e)
        out = self.dropout(linear.view(*e.shape[:-1], self.experts, self.hidden))
        out = F.layer_norm(out, (self.hidden,)) * self.norm_weight + self.norm_bias
        gate = torch.softmax(self.gate(gate_input), dim=-1)
        return (gate.unsqueeze(-1) * out).sum(-2)


class WhiteningAdaptor(nn.Module):
    """UniSRec's adaptor (Hou et al., KDD 2022; ``MoEAdaptorLayer`` of its official code): a mixture of
    parametric-whitening experts without normalisation, z = sum_k g_k(e) (Dropout_k(e) - b_k) W_k, each
    expert dropping its own units; gate g = softmax(e W_g + noise), where in training the noise is
    N(0, 1) * (softplus(e W_n) + 0.01). As there, W_k ~ N(0, 0.02) and b_k, W_g, W_n start at zero (a
    uniform gate). The experts run as one batched product over [..., experts, d] inputs."""

    def __init__(self, dim: int, hidden: int, experts: int = 8, dropout: float = 0.2):
        super().__init__()
        self.experts, self.hidden = experts, hidden
        self.weight = nn.Parameter(torch.randn(experts, dim, hidden) * 0.02)
        self.bias = nn.Parameter(torch.zeros(experts, dim))
        self.dropout = nn.Dropout(dropout)
        self.gate = nn.Parameter(torch.zeros(dim, experts))
        self.noise = nn.Parameter(torch.zeros(dim, experts))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        x = self.dropout(e.unsqueeze(-2).expand(*e.shape[:-1], self.experts, e.shape[-1])) - self.bias
        out = torch.einsum("...kd,kdh->...kh", x, self.weight)
        logits = e @ self.gate
        if self.training:
            logits = logits + torch.randn_like(logits) * (F.softplus(e @ self.noise) + 1e-2)
        return (torch.softmax(logits, dim=-1).unsqueeze(-1) * out).sum(-2)


def make_adaptor(settings: ContentConfig, dim: int, hidden: int) -> nn.Module:
    """The adaptor ``settings.adaptor`` names, from ``dim`` to ``hidden``: ``forward(e [..., d]) -> [..., hidden]``."""
    if settings.adaptor == "moe":
        return MoEAdaptor(dim, hidden, settings.experts, settings.adaptor_dropout)
    if settings.adaptor == "linear":
        return nn.Linear(dim, hidden)
    if settings.adaptor == "whitening":
        return WhiteningAdaptor(dim, hidden, settings.experts, settings.adaptor_dropout)
    raise ConfigError(f"unknown adaptor {settings.adaptor!r}")


# ---------------------------------------------------------------------------------------------- content parts


class ContentEncoder(nn.Module):
    """The content part of one modality: pooling then adaptor; an item without any vector of the modality
    uses a learned 'missing' input."""

    def __init__(self, dim: int, hidden: int, settings: ContentConfig):
        super().__init__()
        self.pool = make_pooling(settings, dim)
        self.adaptor = make_adaptor(settings, dim, hidden)
        self.missing = nn.Parameter(torch.zeros(dim))
        self.dim = dim

    def forward(self, table: ItemTable, items: torch.Tensor | None = None) -> torch.Tensor:
        """[len(items), hidden] representations of ``items`` (all items when None)."""
        vectors, mask = (table.vectors, table.mask) if items is None else (table.vectors[items], table.mask[items])
        if vectors.shape[-2] == 1:
            # one vector per item: every pooling returns it (a lone vector's attention weight is 1), so
            # the pooling is skipped, and with it its cost over the whole catalogue at every step
            e = vectors[..., 0, :].float()
        else:
            e = self.pool(vectors.float(), mask)
        present = mask.any(-1, keepdim=True)
        if isinstance(self.adaptor, MoEAdaptor) and not e.requires_grad and self.missing.requires_grad \
                and torch.is_grad_enabled():
            return self.adaptor(e, ~present, self.missing)  # constant content: see MoEAdaptor.forward
        return self.adaptor(torch.where(present, e, self.missing))


class ContentEncoders(nn.ModuleDict):
    """A ``ContentEncoder`` per modality over item tables held outside the state dict (``tables``): the
    catalogue can be replaced or grown (``set_tables``) without touching the weights, so a pre-trained
    encoder fine-tunes on other items and items added after training are scored by their content.

    The tables follow the weights to their device. In eval mode without gradients the representations of
    all items (``encode_all``) are computed once and reused until the module trains again, its tables change or
    its weights are loaded."""

    def __init__(self, tables: dict[str, ItemTable], hidden: int, settings: ContentConfig):
        super().__init__({m: ContentEncoder(t.vectors.shape[-1], hidden, settings) for m, t in tables.items()})
        self.tables: dict[str, ItemTable] = {}
        self._cache: dict[str, torch.Tensor] | None = None
        self.set_tables(tables)
        self.register_load_state_dict_post_hook(ContentEncoders._forget)

    @property
    def n_items(self) -> int:
        return len(next(iter(self.tables.values())))

    def set_tables(self, tables: dict) -> None:
        """Attach (or replace) the content of some or all modalities: feature stores or ItemTables."""
        for m, table in tables.items():
            if m not in self:
                raise ConfigError(f"the model reads no {m} content (it reads {' and '.join(self)})")
            table = ItemTable.of(table)
            dim = self[m].dim
            if table.vectors.shape[-1] != dim:
                raise ConfigError(f"{m} vectors have {table.vectors.shape[-1]} dimensions, the model expects "
                                  f"{dim}: use the same encoder as in pre-training")
            self.tables[m] = table
        self._cache = None

    def encode(self, m: str, items: torch.Tensor | None = None) -> torch.Tensor:
        """[len(items), hidden] representations of ``items`` in modality ``m`` (all items when None)."""
        return self[m](self.tables[m], items)

    def encode_all(self) -> dict[str, torch.Tensor]:
        """Representations of every item, per modality (cached in eval mode without gradients)."""
        if self.training or torch.is_grad_enabled():
            return {m: self.encode(m) for m in self}
        if self._cache is None:
            self._cache = {m: self.encode(m) for m in self}
        return self._cache

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    @staticmethod
    def _forget(module: "ContentEncoders", _incompatible) -> None:
        module._cache = None

    def _apply(self, fn, recurse=True):
        # Keep the item tables on the device of the weights when the module is moved.
        out = super()._apply(fn, recurse)
        device = next(self.parameters()).device
        self.tables = {m: ItemTable(t.vectors.to(device), t.mask.to(device)) for m, t in self.tables.items()}
        self._cache = None
        return out


class EncodedCatalogue(ExtensibleCatalogue):
    """An ``ExtensibleCatalogue`` whose items are encoded by ``ContentEncoders`` (``self.item_encoders``):
    building them, the tables, and replacing or growing the catalogue, for the models built that way
    (MP4SR, UniSRec)."""

    item_encoders: ContentEncoders

    def build_catalogue(self, context: ModelContext, modalities: list[str] | None, settings: ContentConfig,
                        hidden: int, readable: tuple[str, ...] = MODALITIES) -> None:
        """The content encoders of ``modalities`` (None: those of ``readable`` the data has)."""
        tables = feature_tables(context, modalities, self.name, readable=readable)
        self.modalities = list(tables)
        self.item_encoders = ContentEncoders(tables, hidden, settings)
        self.n_items = self.item_encoders.n_items

    @property
    def tables(self) -> dict[str, ItemTable]:
        return self.item_encoders.tables

    def set_item_tables(self, tables: dict) -> None:
        """Attach (or replace) the item content; not part of the state dict."""
        self.item_encoders.set_tables(tables)
        self.n_items = self.item_encoders.n_items

    def data_settings(self) -> dict:
        return {"modalities": list(self.modalities)}


class ContentProjection(nn.Module):
    """Per modality, the content part of every item ([n, hidden]); a modality an item lacks is zero there
    (it adds nothing to a sum), so this part has no 'missing' input.

    The items' vectors are buffers outside the state dict (data, not weights); a pooling without weights
    (``mean``) is computed once, when built. The weights are named ``pool.<m>.*`` and ``proj.<m>.*`` (the
    adaptor), the names of the checkpoints of SASRecM and FDSA from before the pooling and adaptor were
    settings."""

    def __init__(self, tables: dict[str, ItemTable], hidden: int, settings: ContentConfig):
        super().__init__()
        self.modalities = list(tables)
        self.pool = nn.ModuleDict({m: make_pooling(settings, t.vectors.shape[-1]) for m, t in tables.items()})
        self.proj = nn.ModuleDict({m: make_adaptor(settings, t.vectors.shape[-1], hidden) for m, t in tables.items()})
        for m, t in tables.items():
            if next(self.pool[m].parameters(), None) is not None:
                self.register_buffer(f"vectors_{m}", t.vectors.float(), persistent=False)
                self.register_buffer(f"mask_{m}", t.mask, persistent=False)
            else:
                self.register_buffer(f"pooled_{m}", self.pool[m](t.vectors, t.mask), persistent=False)
            self.register_buffer(f"present_{m}", t.present, persistent=False)

    def pooled(self, m: str, items: torch.Tensor | None = None) -> torch.Tensor:
        """[..., d] pooled vectors of modality ``m`` of ``items`` (all items when None)."""
        pick = (lambda x: x) if items is None else (lambda x: x[items])  # noqa: E731
        if hasattr(self, f"pooled_{m}"):
            return pick(getattr(self, f"pooled_{m}"))
        return self.pool[m](pick(getattr(self, f"vectors_{m}")), pick(getattr(self, f"mask_{m}")))

    def per_modality(self, items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """([..., M, hidden] content of ``items`` per modality, [..., M] presence); all items when None."""
        pick = (lambda x: x) if items is None else (lambda x: x[items])  # noqa: E731
        out = [self.proj[m](self.pooled(m, items)) for m in self.modalities]
        present = torch.stack([pick(getattr(self, f"present_{m}")) for m in self.modalities], dim=-1)
        return torch.stack(out, dim=-2) * present.unsqueeze(-1), present

    def forward(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """[..., hidden]: the sum of the modalities' content."""
        return self.per_modality(items)[0].sum(-2)


# ---------------------------------------------------------------------------------------------- the ID part


class IDEmbedding(nn.Embedding):
    """Item-ID embeddings ([n_items, hidden]) of the items known in training: indexes at or past its rows
    (items added after training) get zero rows, so their representation is their content alone."""

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        known = items < self.num_embeddings
        rows = super().forward(items.clamp(max=self.num_embeddings - 1))
        return rows * known.unsqueeze(-1)

    def start_at_zero(self, bias: torch.Tensor | None) -> None:
        """Zero the rows of the items a softmax ``bias`` leaves out (``-inf``): items that training never
        sees start, and stay, as their content alone, like items added after training."""
        if bias is not None:
            with torch.no_grad():
                self.weight[torch.isinf(bias)] = 0
