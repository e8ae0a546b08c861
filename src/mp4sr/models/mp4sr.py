"""MP4SR: the M2SE multimodal sequence encoder with its pre-training and fine-tuning objectives.

Zhang, Zhou, Zeng, Shen, "Multimodal Pre-training Framework for Sequential Recommendation via
Contrastive Learning" (arXiv 2303.11879). Per modality m in {text, image}:

  item encoder   e_i = attention pooling over the item's vectors (trained, padding masked)
                 z_i = MoE adaptor(e_i): sum_k softmax(e W_g)_k LayerNorm_k(Dropout(Linear_k(e)))
  sequence       [pre-training] random item dropout, complementary text/image mixup
                 h = causal transformer(LayerNorm(Z + P [+ E_id]))  (one transformer, shared)
  pre-training   L = NIP_text + NIP_image + lambda * CMCL
  fine-tuning    s_j = h^t . z'^t_j + h^v . z'^v_j over all items, z'_j = normalise(z_j [+ E_id_j])

Content enters through ``ItemTables`` (item x vectors x dim arrays with masks), kept outside the
state dict: a pre-trained encoder can be fine-tuned on a catalogue with other items (transfer), and
new items can be scored by the inductive variant without retraining.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mp4sr.data.batching import IGNORE, PAD, SequenceBatch
from mp4sr.errors import ConfigError
from mp4sr.models.base import (FINETUNING, PRETRAINING, ExtensibleCatalogue, Factorised, ModelContext, Pretrainable,
                               SequentialRecommender, TransformerConfig, register)
from mp4sr.models.layers import CausalTransformer, init_weights, last_positions
from mp4sr.models.modalities import MODALITIES, choose_modalities, dataset_name
from mp4sr.models.sampled import LossConfig, sampled_softmax_loss

Modality = Literal["text", "image"]
PoolScorer = Literal["linear", "mlp"]


class MP4SRConfig(LossConfig, TransformerConfig):
    stage: Literal["pretrain", "finetune"] = Field(
        "finetune", description="the objective; set by `mp4sr pretrain`, `finetune` and `run`")
    modalities: list[Modality] | None = Field(None, description="the item modalities read; unset: those the data has")
    pool_hidden: int = Field(64, description="attention pooling: d -> pool_hidden -> 1")
    pool_scorer: PoolScorer = Field(
        "linear", description="attention pooling score: 'linear' (the paper's) or 'mlp' (a ReLU after the first layer)")
    experts: int = Field(8, description="experts of each modality's MoE adaptor")
    adaptor_dropout: float = Field(0.2, description="dropout inside the MoE adaptor")
    tau: float = Field(0.07, description="temperature of the contrastive losses (pre-training) and of the "
                       "next-item softmax (fine-tuning)")
    cmcl_weight: float = Field(0.01, description="lambda of the cross-modality contrastive loss", json_schema_extra=PRETRAINING)
    nip: bool = Field(True, description="modality-specific next-item prediction", json_schema_extra=PRETRAINING)
    cmcl: bool = Field(True, description="cross-modality contrastive learning", json_schema_extra=PRETRAINING)
    mixup: bool = Field(True, description="complementary sequence mixup", json_schema_extra=PRETRAINING)
    mixup_max: float = Field(0.5, description="mixup probability p ~ U(0, mixup_max) per sequence", json_schema_extra=PRETRAINING)
    item_dropout_max: float = Field(0.2, description="item dropout p ~ U(0, max) per sequence", json_schema_extra=PRETRAINING)
    id_embedding: bool = Field(True, description="transductive (item-ID embeddings) or inductive (content only)",
                               json_schema_extra=FINETUNING)
    freeze_encoder: bool = Field(False, description="train only the item-ID embeddings", json_schema_extra=FINETUNING)
    encoder_lr_scale: float = Field(
        1.0, gt=0, description="learning rate of everything but the item-ID embeddings, relative to train.lr",
        json_schema_extra=FINETUNING)


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

    @property
    def present(self) -> torch.Tensor:
        return self.mask.any(1)

    def __len__(self) -> int:
        return self.vectors.shape[0]


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

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.linear(e).view(*e.shape[:-1], self.experts, self.hidden))
        out = F.layer_norm(out, (self.hidden,)) * self.norm_weight + self.norm_bias
        gate = torch.softmax(self.gate(e), dim=-1)
        return (gate.unsqueeze(-1) * out).sum(-2)


class ItemEncoder(nn.Module):
    """Attention pooling then MoE adaptor; an item without any vector uses a learned 'missing' input."""

    def __init__(self, dim: int, cfg: MP4SRConfig):
        super().__init__()
        self.pool = AttentionPooling(dim, cfg.pool_hidden, cfg.pool_scorer)
        self.adaptor = MoEAdaptor(dim, cfg.hidden, cfg.experts, cfg.adaptor_dropout)
        self.missing = nn.Parameter(torch.zeros(dim))
        self.dim = dim

    def forward(self, table: ItemTable, items: torch.Tensor | None = None) -> torch.Tensor:
        """[len(items), hidden] representations of ``items`` (all items when None)."""
        vectors, mask = (table.vectors, table.mask) if items is None else (table.vectors[items], table.mask[items])
        e = self.pool(vectors.float(), mask)
        e = torch.where(mask.any(1, keepdim=True), e, self.missing)
        return self.adaptor(e)


def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """-mean log softmax(anchor . candidate / tau)[label], both sides L2-normalised."""
    logits = F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).T / tau
    return F.cross_entropy(logits, labels)


def cmcl_loss(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor, tau: float) -> torch.Tensor:
    """Cross-modality sequence contrast: a_i <-> b_i are positives; the negatives of a_i are b_j and
    a_j (j != i); sequences that share their target item are false negatives and are masked."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    n = a.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=a.device)
    same = (targets[:, None] == targets[None, :]) & ~eye

    def one_side(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cross = (x @ y.T / tau).masked_fill(same, float("-inf"))
        inner = (x @ x.T / tau).masked_fill(same | eye, float("-inf"))
        logits = torch.cat([cross, inner], dim=1)
        return -(cross.diagonal() - torch.logsumexp(logits, dim=1))

    return (one_side(a, b) + one_side(b, a)).mean() / 2


def item_dropout(batch: SequenceBatch, max_p: float, generator: torch.Generator | None = None) -> SequenceBatch:
    """Remove each item with probability p ~ U(0, max_p) (per sequence), keep at least one, pack left.

    A kept position takes the target of the last position before the next kept one, so each output
    still predicts the item that follows its (thinned) prefix, as in the prefix form of the paper."""
    tokens, targets = batch.tokens, batch.targets
    B, L = tokens.shape
    real = tokens != PAD
    p = torch.rand(B, 1, generator=generator, device=tokens.device) * max_p
    keep = real & (torch.rand(B, L, generator=generator, device=tokens.device) >= p)
    none = ~keep.any(1)
    keep[none, (batch.lengths[none] - 1)] = True
    pos = torch.arange(L, device=tokens.device).expand(B, L)
    # next kept position after p (L when none): suffix minimum of the kept positions, shifted by one
    kept_pos = torch.where(keep, pos, torch.full_like(pos, L))
    suffix_min = torch.flip(torch.cummin(torch.flip(kept_pos, [1]), dim=1).values, [1])
    next_kept = torch.cat([suffix_min[:, 1:], torch.full((B, 1), L, device=tokens.device)], dim=1)
    source = torch.minimum(next_kept, batch.lengths[:, None]) - 1
    moved_targets = targets.gather(1, source)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    lengths = keep.sum(1)
    packed = pos < lengths[:, None]
    new_tokens = torch.where(packed, tokens.gather(1, order), PAD)
    new_targets = torch.where(packed, moved_targets.gather(1, order), IGNORE)
    return SequenceBatch(new_tokens, lengths, batch.rows, targets=new_targets)


@register
class MP4SR(Factorised, ExtensibleCatalogue, Pretrainable, SequentialRecommender):
    """MP4SR: multimodal (text + image) M2SE encoder, contrastive pre-training, fine-tuning.

    It reads the modalities the dataset has unless ``params.modalities`` names them: with one, there is
    no mixup and no cross-modality contrast, and next-item prediction is that modality's."""

    name = "mp4sr"
    title = "MP4SR"
    Config = MP4SRConfig
    sampler = None
    readable: ClassVar[tuple[str, ...]] = MODALITIES  # the modalities it can read
    # The official code's settings of the two stages. Pre-training runs until validation stops improving:
    # at batch 1024 a small dataset takes only a few steps per epoch (3 on amazon-scientific-mm), and 10
    # epochs leave the encoder far from converged.
    stage_defaults: ClassVar[dict[str, dict]] = {
        "pretrain": {"params": {"stage": "pretrain"},
                     "train": {"lr": 1e-3, "batch_size": 1024, "weight_decay": 0.0, "epochs": 200, "patience": 10}},
        "finetune": {"params": {"stage": "finetune"},
                     "train": {"lr": 1e-3, "batch_size": 1024, "weight_decay": 1e-3, "epochs": 300, "patience": 20}},
    }

    def __init__(self, config: MP4SRConfig, context: ModelContext):
        super().__init__(config, context)
        tables = context.features or {}
        self.modalities = choose_modalities(self.name, config.modalities, tables, dataset_name(context), self.readable)
        self.tables: dict[str, ItemTable] = {}
        self.set_item_tables({m: tables[m] for m in self.modalities})
        self.item_encoders = nn.ModuleDict({m: ItemEncoder(self.tables[m].vectors.shape[-1], config) for m in self.modalities})
        self.transformer = CausalTransformer.from_config(config, context.max_len)
        self.id_embedding = (
            nn.Embedding(context.n_items, config.hidden) if config.stage == "finetune" and config.id_embedding else None
        )
        self.apply(init_weights)
        self.sampler = config.sampler(context) if isinstance(config, LossConfig) else None  # sampled fine-tuning
        if config.stage == "finetune" and config.freeze_encoder:
            for name, param in self.named_parameters():
                param.requires_grad = name.startswith("id_embedding")

    def data_settings(self) -> dict:
        return {"modalities": list(self.modalities)}

    def param_groups(self) -> list[dict]:
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        ids = [p for n, p in trainable if n.startswith("id_embedding")]
        rest = [p for n, p in trainable if not n.startswith("id_embedding")]
        scale = self.config.encoder_lr_scale
        if self.config.stage != "finetune" or scale == 1.0 or not rest:
            return super().param_groups()
        return [g for g in ({"params": ids}, {"params": rest, "lr_scale": scale}) if g["params"]]

    # ------------------------------------------------------------------ items

    def set_item_tables(self, tables: dict) -> None:
        """Attach (or replace) the item content; not part of the state dict."""
        for m, table in tables.items():
            table = table if isinstance(table, ItemTable) else ItemTable.from_store(table)
            if m in self.tables and table.vectors.shape[-1] != self.tables[m].vectors.shape[-1]:
                raise ConfigError(f"{m} vectors have {table.vectors.shape[-1]} dimensions, the model expects "
                                  f"{self.tables[m].vectors.shape[-1]}: use the same encoder as in pre-training")
            self.tables[m] = table
        self.n_items = len(next(iter(self.tables.values())))
        self._eval_cache = None

    def _apply(self, fn, recurse=True):
        # Keep the item tables on the device of the weights when the module is moved.
        out = super()._apply(fn, recurse)
        device = next(self.parameters()).device
        self.tables = {m: ItemTable(t.vectors.to(device), t.mask.to(device)) for m, t in self.tables.items()}
        self._eval_cache = None
        return out

    def item_reps(self, m: str, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.item_encoders[m](self.tables[m], items)

    def all_item_reps(self) -> dict[str, torch.Tensor]:
        """Representations of every item per modality; in eval mode computed once and reused until
        the model trains again or its items or weights change."""
        if self.training or torch.is_grad_enabled():
            return {m: self.item_reps(m) for m in self.modalities}
        if self._eval_cache is None:
            self._eval_cache = {m: self.item_reps(m) for m in self.modalities}
        return self._eval_cache

    def train(self, mode: bool = True):
        self._eval_cache = None
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._eval_cache = None
        return super().load_state_dict(*args, **kwargs)

    def _id_rows(self, items: torch.Tensor) -> torch.Tensor:
        """ID embeddings of item indexes; items added after training (index >= trained) get zeros."""
        known = items < self.id_embedding.num_embeddings
        rows = self.id_embedding(items.clamp(max=self.id_embedding.num_embeddings - 1))
        return rows * known.unsqueeze(-1)

    # ------------------------------------------------------------------ sequences

    def _encode(self, z_seq: dict[str, torch.Tensor], real: torch.Tensor, extra: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Run the shared transformer over every modality's sequence in one batched pass."""
        stacked = torch.cat([z_seq[m] * real.unsqueeze(-1) for m in self.modalities], dim=0)
        if extra is not None:
            extra = extra.repeat(len(self.modalities), 1, 1)
        out = self.transformer(stacked, extra).chunk(len(self.modalities), dim=0)
        return dict(zip(self.modalities, out))

    def _mixup(self, z_seq: dict[str, torch.Tensor], items: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """Swap text and image embeddings at the same random positions (never at padding or where an
        item lacks either modality)."""
        zt, zv = z_seq["text"], z_seq["image"]
        B, L = real.shape
        p = torch.rand(B, 1, device=real.device) * self.config.mixup_max
        allowed = real & self.tables["text"].present[items] & self.tables["image"].present[items]
        swap = ((torch.rand(B, L, device=real.device) < p) & allowed).unsqueeze(-1)
        return {"text": torch.where(swap, zv, zt), "image": torch.where(swap, zt, zv)}

    # ------------------------------------------------------------------ objectives

    def _touched_items(self, batch: SequenceBatch, real: torch.Tensor, others: torch.Tensor):
        """Representations of just the items a step touches: the batch's inputs and ``others``
        (targets, candidates). Returns (per modality: the distinct items' representations, the
        input sequences [B, L, H] zero at padding, and the row of each of ``others``)."""
        items_in = (batch.tokens - 1).clamp(min=0)
        unique, inverse = torch.unique(torch.cat([items_in[real], others]), return_inverse=True)
        n_in = int(real.sum())
        z = {m: self.item_reps(m, unique) for m in self.modalities}
        z_seq = {}
        for m in self.modalities:
            seq = z[m].new_zeros(*batch.tokens.shape, z[m].shape[-1])
            seq[real] = z[m][inverse[:n_in]]
            z_seq[m] = seq
        return z, z_seq, inverse[n_in:]

    def calculate_loss(self, batch: SequenceBatch) -> torch.Tensor:
        if self.config.stage == "pretrain":
            return self.pretrain_loss(batch)
        return self.finetune_loss(batch)

    def pretrain_loss(self, batch: SequenceBatch) -> torch.Tensor:
        cfg = self.config
        if self.training and cfg.item_dropout_max > 0:
            batch = item_dropout(batch, cfg.item_dropout_max)
        real = batch.tokens != PAD
        keep = batch.targets != IGNORE
        items_in = (batch.tokens - 1).clamp(min=0)
        z, z_seq, target_idx = self._touched_items(batch, real, batch.targets[keep])
        if self.training and cfg.mixup and len(self.modalities) == 2:
            z_seq = self._mixup(z_seq, items_in, real)
        h = self._encode(z_seq, real, None)
        loss = batch.tokens.new_zeros((), dtype=torch.float32)
        if cfg.nip:
            # In-batch negatives are the distinct target items of the batch: a repeat of the
            # positive item is therefore never a negative (false negatives masked).
            target_unique, target_label = torch.unique(target_idx, return_inverse=True)
            for m in self.modalities:
                loss = loss + info_nce(h[m][keep], z[m][target_unique], target_label, cfg.tau)
        if cfg.cmcl and cfg.cmcl_weight > 0 and len(self.modalities) == 2:
            last = last_positions(batch.targets.unsqueeze(-1), batch.lengths).squeeze(-1)
            a = last_positions(h["text"], batch.lengths)
            b = last_positions(h["image"], batch.lengths)
            loss = loss + cfg.cmcl_weight * cmcl_loss(a, b, last, cfg.tau)
        return loss

    def _hidden(self, batch: SequenceBatch, z_all: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """[B, L, H] outputs per modality over the items' content (``z_all``: ``all_item_reps()`` if
        already computed), with their ID embeddings added on the input side when the model has them."""
        real = batch.tokens != PAD
        items_in = (batch.tokens - 1).clamp(min=0)
        z_all = self.all_item_reps() if z_all is None else z_all
        extra = self._id_rows(items_in) * real.unsqueeze(-1) if self.id_embedding is not None else None
        return self._encode({m: z_all[m][items_in] for m in self.modalities}, real, extra)

    def _output_items(self, z_all: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """[n_items, H] normalised output side per modality: content, plus the ID embedding if any."""
        z_all = self.all_item_reps() if z_all is None else z_all
        if self.id_embedding is None:
            return {m: F.normalize(z_all[m], dim=-1) for m in self.modalities}
        ids = self._id_rows(torch.arange(self.n_items, device=next(self.parameters()).device))
        return {m: F.normalize(z_all[m] + ids, dim=-1) for m in self.modalities}

    def _scores(self, batch: SequenceBatch, positions: torch.Tensor | None) -> torch.Tensor:
        """Scores of all items for the outputs at ``positions`` (a mask), or at the last positions:
        sum over modalities of cosine similarities (content only in pre-training)."""
        z_all = self.all_item_reps()  # once: in training it is recomputed on every call
        h, items = self._hidden(batch, z_all), self._output_items(z_all)
        scores = 0
        for m in self.modalities:
            out = h[m][positions] if positions is not None else last_positions(h[m], batch.lengths)
            scores = scores + F.normalize(out, dim=-1) @ items[m].T
        return scores

    def finetune_loss(self, batch: SequenceBatch) -> torch.Tensor:
        keep = batch.targets != IGNORE
        if self.sampler is not None:
            return self._sampled_finetune_loss(batch, keep)
        scores = self._scores(batch, keep)
        return F.cross_entropy(scores / self.config.tau, batch.targets[keep])

    def _sampled_finetune_loss(self, batch: SequenceBatch, keep: torch.Tensor) -> torch.Tensor:
        """Fine-tuning against the candidates of a CandidateSampler: item representations are
        computed for the batch's input items and the candidates only, never for the whole catalogue."""
        real = batch.tokens != PAD
        items_in = (batch.tokens - 1).clamp(min=0)
        cands = self.sampler.sample(batch.targets[keep])
        z, z_seq, rows = self._touched_items(batch, real, cands.items)
        extra = self._id_rows(items_in) * real.unsqueeze(-1) if self.id_embedding is not None else None
        h = self._encode(z_seq, real, extra)
        scores = 0
        for m in self.modalities:
            zc = z[m][rows] + self._id_rows(cands.items) if self.id_embedding is not None else z[m][rows]
            scores = scores + F.normalize(h[m][keep], dim=-1) @ F.normalize(zc, dim=-1).T
        return sampled_softmax_loss(scores, cands, self.config.tau)

    # The score is a sum over modalities of products of normalised vectors, i.e. one dot product of
    # the concatenations: what chunked ranking over large catalogues uses.
    def user_vectors(self, batch: SequenceBatch) -> torch.Tensor:
        h = self._hidden(batch)
        return torch.cat([F.normalize(last_positions(h[m], batch.lengths), dim=-1) for m in self.modalities], dim=-1)

    def item_vectors(self) -> torch.Tensor:
        return torch.cat(list(self._output_items().values()), dim=-1)

    def full_sort_predict(self, batch: SequenceBatch) -> torch.Tensor:
        return self._scores(batch, None)

    # ------------------------------------------------------------------ pre-trained weights

    def load_pretrained(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """Load a pre-trained encoder; the item-ID embeddings (absent in pre-training) stay new.
        Returns the names that were not in the checkpoint."""
        state = {k: v for k, v in state_dict.items() if not k.startswith("id_embedding")}
        result = self.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ConfigError(f"the checkpoint has weights this model lacks: {result.unexpected_keys[:5]}")
        absent = [k for k in result.missing_keys if not k.startswith("id_embedding")]
        if absent:
            raise ConfigError(
                f"the checkpoint lacks weights for {absent[:5]}: was it pre-trained with other modalities?"
            )
        return result.missing_keys
