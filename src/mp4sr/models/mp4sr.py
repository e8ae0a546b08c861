"""MP4SR: the M2SE multimodal sequence encoder with its pre-training and fine-tuning objectives.

Zhang, Zhou, Zeng, Shen, "Multimodal Pre-training Framework for Sequential Recommendation via
Contrastive Learning" (arXiv 2303.11879). Per modality m in {text, image}:

  item encoder   e_i = attention pooling over the item's vectors (trained, padding masked)
                 z_i = MoE adaptor(e_i): sum_k softmax(e W_g)_k LayerNorm_k(Dropout(Linear_k(e)))
  sequence       [pre-training] random item dropout, complementary text/image mixup
                 h = causal transformer(LayerNorm(Z + P [+ E_id]))  (one transformer, shared)
  pre-training   L = NIP_text + NIP_image + lambda * CMCL
  fine-tuning    s_j = h^t . z'^t_j + h^v . z'^v_j over all items, z'_j = normalise(z_j [+ E_id_j])

The item encoders and the ID embedding are the parts of ``models.items`` (pooling and adaptor are
settings: ``params.pooling``, ``params.adaptor``). Content enters through ``ItemTables`` (item x vectors x
dim arrays with masks), kept outside the state dict: a pre-trained encoder can be fine-tuned on a
catalogue with other items (transfer), and new items can be scored by the inductive variant without
retraining.

The module reads in the order of the method: the settings, the cross-modality loss, then the model:
its encoder (M2SE), the mixup, the pre-training losses, the fine-tuning loss, and scoring.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from mp4sr.data.batching import IGNORE, PAD, SequenceBatch
from mp4sr.models.base import (FINETUNING, PRETRAINING, Factorised, ModelContext, Pretrainable,
                               SequentialRecommender, TransformerConfig, register)
from mp4sr.models.items import ContentConfig, EncodedCatalogue, IDEmbedding
from mp4sr.models.layers import CausalTransformer, initialise, last_positions
from mp4sr.models.pretraining import info_nce, item_dropout, load_encoder
from mp4sr.models.sampled import LossConfig, sampled_softmax_loss
from mp4sr.models.softmax import full_softmax_loss

Modality = Literal["text", "image"]


class MP4SRConfig(ContentConfig, LossConfig, TransformerConfig):
    stage: Literal["pretrain", "finetune"] = Field(
        "finetune", description="the objective; set by `mp4sr pretrain`, `finetune` and `run`")
    modalities: list[Modality] | None = Field(None, description="the item modalities read; unset: those the data has")
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


@register
class MP4SR(Factorised, EncodedCatalogue, Pretrainable, SequentialRecommender):
    """MP4SR: multimodal (text + image) M2SE encoder, contrastive pre-training, fine-tuning.

    It reads the modalities the dataset has unless ``params.modalities`` names them: with one, there is
    no mixup and no cross-modality contrast, and next-item prediction is that modality's."""

    name = "mp4sr"
    title = "MP4SR"
    Config = MP4SRConfig
    # The official code's settings of the two stages, but for when they stop and how fine-tuning batches.
    # Pre-training runs until validation stops improving: at batch 1024 a small dataset takes only a few
    # steps per epoch (3 on amazon-scientific-mm), and 10 epochs leave the encoder far from converged.
    # Fine-tuning takes one prefix per row (RecBole's form) in batches of 2048: above whole sequences on
    # amazon-toys-mm and amazon-scientific, level on amazon-scientific-mm; an epoch costs 1.5-3.8 times one
    # on whole sequences at batch 1024 (README, "Where MP4SR's defaults come from").
    stage_defaults: ClassVar[dict[str, dict]] = {
        "pretrain": {"params": {"stage": "pretrain"},
                     "train": {"lr": 1e-3, "batch_size": 1024, "weight_decay": 0.0, "epochs": 200, "patience": 10}},
        "finetune": {"params": {"stage": "finetune"}, "data": {"training_mode": "prefix"},
                     "train": {"lr": 1e-3, "batch_size": 2048, "weight_decay": 1e-3, "epochs": 300, "patience": 10}},
    }

    def __init__(self, config: MP4SRConfig, context: ModelContext):
        super().__init__(config, context)
        self.build_catalogue(context, config.modalities, config, config.hidden)
        self.transformer = CausalTransformer.from_config(config, context.max_len)
        self.id_embedding = (
            IDEmbedding(context.n_items, config.hidden) if config.stage == "finetune" and config.id_embedding else None
        )
        initialise(self, config.init)
        self.sampler = config.sampler(context)  # sampled fine-tuning (params.loss=sampled), else None
        self.register_buffer("negatives_bias", config.negatives_bias(context.item_counts), persistent=False)
        if self.id_embedding is not None:
            self.id_embedding.start_at_zero(self.negatives_bias)
        if config.stage == "finetune" and config.freeze_encoder:
            for name, param in self.named_parameters():
                param.requires_grad = name.startswith("id_embedding")

    def param_groups(self) -> list[dict]:
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        ids = [p for n, p in trainable if n.startswith("id_embedding")]
        rest = [p for n, p in trainable if not n.startswith("id_embedding")]
        scale = self.config.encoder_lr_scale
        if self.config.stage != "finetune" or scale == 1.0 or not rest:
            return super().param_groups()
        return [g for g in ({"params": ids}, {"params": rest, "lr_scale": scale}) if g["params"]]

    # ------------------------------------------------------------------ the catalogue

    def item_reps(self, m: str, items: torch.Tensor | None = None) -> torch.Tensor:
        """z^m of ``items`` (all items when None): attention pooling + MoE adaptor of the item's vectors."""
        return self.item_encoders.encode(m, items)

    def all_item_reps(self) -> dict[str, torch.Tensor]:
        """z^m of every item per modality; in eval mode computed once and reused until the model trains
        again or its items or weights change."""
        return self.item_encoders.encode_all()

    # ------------------------------------------------------------------ M2SE: the sequence encoder

    def _encode(self, z_seq: dict[str, torch.Tensor], real: torch.Tensor, extra: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Run the shared transformer over every modality's sequence in one batched pass."""
        stacked = torch.cat([z_seq[m] * real.unsqueeze(-1) for m in self.modalities], dim=0)
        if extra is not None:
            extra = extra.repeat(len(self.modalities), 1, 1)
        lengths = real.sum(dim=1).repeat(len(self.modalities))
        out = self.transformer(stacked, extra, lengths=lengths).chunk(len(self.modalities), dim=0)
        return dict(zip(self.modalities, out))

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

    # ------------------------------------------------------------------ complementary sequence mixup

    def _mixup(self, z_seq: dict[str, torch.Tensor], items: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """Swap text and image embeddings at the same random positions (never at padding or where an
        item lacks either modality)."""
        zt, zv = z_seq["text"], z_seq["image"]
        B, L = real.shape
        p = torch.rand(B, 1, device=real.device) * self.config.mixup_max
        allowed = real & self.tables["text"].present[items] & self.tables["image"].present[items]
        swap = ((torch.rand(B, L, device=real.device) < p) & allowed).unsqueeze(-1)
        return {"text": torch.where(swap, zv, zt), "image": torch.where(swap, zt, zv)}

    # ------------------------------------------------------------------ pre-training: NIP + lambda CMCL

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
            loss = loss + self._nip_loss(h, z, keep, target_idx)
        if cfg.cmcl and cfg.cmcl_weight > 0 and len(self.modalities) == 2:
            last = last_positions(batch.targets.unsqueeze(-1), batch.lengths).squeeze(-1)
            a = last_positions(h["text"], batch.lengths)
            b = last_positions(h["image"], batch.lengths)
            loss = loss + cfg.cmcl_weight * cmcl_loss(a, b, last, cfg.tau)
        return loss

    def _nip_loss(self, h: dict[str, torch.Tensor], z: dict[str, torch.Tensor], keep: torch.Tensor,
                  target_idx: torch.Tensor) -> torch.Tensor:
        """Modality-specific next-item prediction, summed over the modalities: in-batch InfoNCE of each
        output against its next item. The negatives are the distinct target items of the batch, so a
        repeat of the positive item is never a negative (false negatives masked)."""
        target_unique, target_label = torch.unique(target_idx, return_inverse=True)
        return sum(info_nce(h[m][keep], z[m][target_unique], target_label, self.config.tau) for m in self.modalities)

    # ------------------------------------------------------------------ fine-tuning: content [+ IDs], CE over items

    def _hidden(self, batch: SequenceBatch, z_all: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """[B, L, H] outputs per modality over the items' content (``z_all``: ``all_item_reps()`` if
        already computed), with their ID embeddings added on the input side when the model has them."""
        real = batch.tokens != PAD
        items_in = (batch.tokens - 1).clamp(min=0)
        z_all = self.all_item_reps() if z_all is None else z_all
        extra = self.id_embedding(items_in) * real.unsqueeze(-1) if self.id_embedding is not None else None
        return self._encode({m: z_all[m][items_in] for m in self.modalities}, real, extra)

    def _output_items(self, z_all: dict[str, torch.Tensor] | None = None, dropout: float = 0.0) -> dict[str, torch.Tensor]:
        """[n_items, H] normalised output side per modality: content, plus the ID embedding if any
        (``dropout``: dropped before the normalisation, in training)."""
        z_all = self.all_item_reps() if z_all is None else z_all
        ids = (self.id_embedding(torch.arange(self.n_items, device=next(self.parameters()).device))
               if self.id_embedding is not None else None)
        out = {}
        for m in self.modalities:
            items = z_all[m] if ids is None else z_all[m] + ids
            out[m] = F.normalize(F.dropout(items, dropout, self.training) if dropout else items, dim=-1)
        return out

    def finetune_loss(self, batch: SequenceBatch) -> torch.Tensor:
        keep = batch.targets != IGNORE
        if self.sampler is not None:
            return self._sampled_finetune_loss(batch, keep)
        z_all = self.all_item_reps()
        h, items = self._hidden(batch, z_all), self._output_items(z_all, self.config.item_dropout)
        # the sum over modalities of cosine scores is one product of the concatenations
        outputs = torch.cat([F.normalize(h[m][keep], dim=-1) for m in self.modalities], dim=-1)
        items = torch.cat([items[m] for m in self.modalities], dim=-1)
        return full_softmax_loss(outputs, items, batch.targets[keep], scale=1 / self.config.tau,
                                 bias=self.negatives_bias, exclude=self.config.loss_exclusions(batch, keep))

    def _sampled_finetune_loss(self, batch: SequenceBatch, keep: torch.Tensor) -> torch.Tensor:
        """Fine-tuning against the candidates of a CandidateSampler: item representations are
        computed for the batch's input items and the candidates only, never for the whole catalogue."""
        real = batch.tokens != PAD
        items_in = (batch.tokens - 1).clamp(min=0)
        cands = self.sampler.sample(batch.targets[keep])
        z, z_seq, rows = self._touched_items(batch, real, cands.items)
        extra = self.id_embedding(items_in) * real.unsqueeze(-1) if self.id_embedding is not None else None
        h = self._encode(z_seq, real, extra)
        scores = 0
        for m in self.modalities:
            zc = z[m][rows] + self.id_embedding(cands.items) if self.id_embedding is not None else z[m][rows]
            if self.config.item_dropout:
                zc = F.dropout(zc, self.config.item_dropout, self.training)
            scores = scores + F.normalize(h[m][keep], dim=-1) @ F.normalize(zc, dim=-1).T
        return sampled_softmax_loss(scores, cands, self.config.tau)

    # ------------------------------------------------------------------ scoring

    def _scores(self, batch: SequenceBatch) -> torch.Tensor:
        """Scores of all items for the outputs at the last positions: sum over modalities of cosine
        similarities."""
        z_all = self.all_item_reps()  # once: in training it is recomputed on every call
        h, items = self._hidden(batch, z_all), self._output_items(z_all)
        scores = 0
        for m in self.modalities:
            scores = scores + F.normalize(last_positions(h[m], batch.lengths), dim=-1) @ items[m].T
        return scores

    # The score is a sum over modalities of products of normalised vectors, i.e. one dot product of
    # the concatenations: what chunked ranking over large catalogues uses.
    def user_vectors(self, batch: SequenceBatch) -> torch.Tensor:
        h = self._hidden(batch)
        return torch.cat([F.normalize(last_positions(h[m], batch.lengths), dim=-1) for m in self.modalities], dim=-1)

    def item_vectors(self) -> torch.Tensor:
        return torch.cat(list(self._output_items().values()), dim=-1)

    def full_sort_predict(self, batch: SequenceBatch) -> torch.Tensor:
        return self._scores(batch)

    # ------------------------------------------------------------------ pre-trained weights

    def load_pretrained(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """Load a pre-trained encoder; the item-ID embeddings (absent in pre-training) stay new.
        Returns the names that were not in the checkpoint."""
        return load_encoder(self, state_dict)
