"""UniSRec (Hou et al., KDD 2022): text-only universal sequence representations, pre-trained with
sequence-item and sequence-sequence contrast, then fine-tuned inductively or transductively.

Built from the parts of ``models.items``: the text content part (attention pooling + MoE adaptor by
default; ``params.pooling`` and ``params.adaptor`` choose), the ID part, and the causal transformer. One
text stream: the fine-tuning scores are ``normalise(h) . normalise(z_j [+ E_id_j]) / tau`` over all items
(``id_embedding``: transductive, the ID embedding also added on the input side; without: inductive,
content only).

Pre-training: ``L = L_seq-item + lambda * L_seq-seq``. Seq-item: in-batch InfoNCE between the output
at each position and its next item's representation (repeats of the positive are not negatives).
Seq-seq: InfoNCE between a sequence and an item-dropout view of it (the other sequences' views are
negatives, those with the same next item are masked out).

Defaults of the official code (``props/UniSRec.yaml``, ``finetune.py``): hidden 300, 2 layers, 2 heads,
FFN 256, hidden / attention dropout 0.5, 8 experts, adaptor dropout 0.2, temperature 0.07,
lambda 1e-3, item drop ratio 0.2; fine-tuning a pre-trained model trains the adaptor and the ID
embeddings with the transformer fixed (``fix_encoder``). Differences, stated: the official adaptor is
parametric whitening experts with noisy gating (``params.adaptor=whitening``) over one text vector per
item; by default here it is the MoE adaptor of ``models.items`` (an affine map and LayerNorm per expert,
softmax gating), and either runs over the attention-pooled vectors of the item (identical when an item
has one vector). Pre-training uses the target domain, as MP4SR's official code does (UniSRec pre-trains
on five other Amazon domains).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from mp4sr.data.batching import IGNORE, PAD, SequenceBatch
from mp4sr.models.base import (FINETUNING, PRETRAINING, Factorised, ModelContext, Pretrainable,
                               SequentialRecommender, TransformerConfig, register)
from mp4sr.models.items import ContentConfig, EncodedCatalogue, IDEmbedding
from mp4sr.models.layers import CausalTransformer, initialise, last_positions
from mp4sr.models.pretraining import info_nce, item_dropout, load_encoder
from mp4sr.models.softmax import HistoryNegativesConfig, full_softmax_loss


class UniSRecConfig(ContentConfig, HistoryNegativesConfig, TransformerConfig):
    stage: Literal["pretrain", "finetune"] = Field(
        "finetune", description="the objective; set by `mp4sr pretrain`, `finetune` and `run`")
    modalities: list[Literal["text"]] | None = Field(None, description="text only (unset: text, which the data must have)")
    hidden: int = Field(300, description="width of item representations and of the transformer")
    dropout: float = Field(0.5, description="dropout of embeddings and layers")
    tau: float = Field(0.07, description="temperature of the contrastive losses and of the next-item softmax")
    seq_seq_weight: float = Field(1e-3, description="lambda of the sequence-sequence contrast", json_schema_extra=PRETRAINING)
    item_drop: float = Field(0.2, description="item dropout of the sequence-sequence view", json_schema_extra=PRETRAINING)
    id_embedding: bool = Field(True, description="transductive (item-ID embeddings) or inductive (content only)",
                               json_schema_extra=FINETUNING)
    fix_encoder: bool = Field(True, description="from a pre-trained checkpoint: keep the transformer fixed",
                              json_schema_extra=FINETUNING)


def seq_seq_loss(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE of a_i against b (positive b_i); b_j with the same target as i is masked out."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau
    eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
    logits = logits.masked_fill((targets[:, None] == targets[None, :]) & ~eye, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


@register
class UniSRec(Factorised, EncodedCatalogue, Pretrainable, SequentialRecommender):
    """UniSRec: text-only MoE-adapted item encoder; seq-item + seq-seq contrastive pre-training."""

    name = "unisrec"
    title = "UniSRec"
    Config = UniSRecConfig
    # Settings of the two stages (what `mp4sr experiment` applies under an entry's own). Fine-tuning:
    # the official lr 1e-3, batch 2048, patience 10. Pre-training: lr 1e-3; the official batch 8192 is
    # for five large source domains, here the target domain is pre-trained at batch 1024 for at most 30 epochs.
    stage_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "pretrain": {"params": {"stage": "pretrain"},
                     "train": {"lr": 1e-3, "batch_size": 1024, "weight_decay": 0.0, "epochs": 30, "patience": 10}},
        "finetune": {"params": {"stage": "finetune"},
                     "train": {"lr": 1e-3, "batch_size": 2048, "weight_decay": 0.0, "patience": 10}},
    }

    def __init__(self, config: UniSRecConfig, context: ModelContext):
        super().__init__(config, context)
        self.build_catalogue(context, config.modalities, config, config.hidden, readable=("text",))
        self.transformer = CausalTransformer.from_config(config, context.max_len)
        self.id_embedding = (
            IDEmbedding(context.n_items, config.hidden) if config.stage == "finetune" and config.id_embedding else None
        )
        initialise(self, config.init)
        self.register_buffer("negatives_bias", config.negatives_bias(context.item_counts), persistent=False)
        if self.id_embedding is not None:
            self.id_embedding.start_at_zero(self.negatives_bias)

    # ------------------------------------------------------------------ the sequence encoder

    def _states(self, batch: SequenceBatch, reps: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """[B, L, H] transformer outputs of a batch; ``reps(items)`` gives the items' representations, to
        which the ID embeddings are added on the input side when the model has them (fine-tuning)."""
        real = batch.tokens != PAD
        items = (batch.tokens - 1).clamp(min=0)
        extra = self.id_embedding(items) * real.unsqueeze(-1) if self.id_embedding is not None else None
        return self.transformer(reps(items) * real.unsqueeze(-1), extra, lengths=real.sum(dim=1))

    # ------------------------------------------------------------------ pre-training: seq-item + lambda seq-seq

    def pretrain_loss(self, batch: SequenceBatch) -> torch.Tensor:
        cfg = self.config
        keep = batch.targets != IGNORE
        # Only the items this batch touches are encoded (the view's items are a subset of them).
        touched = torch.unique(torch.cat([batch.tokens[batch.tokens != PAD] - 1, batch.targets[keep]]))
        z = self.item_encoders.encode("text", touched)
        row = torch.zeros(self.n_items, dtype=torch.long, device=z.device)
        row[touched] = torch.arange(len(touched), device=z.device)
        reps = lambda items: z[row[items]]  # noqa: E731
        h = self._states(batch, reps)
        candidates, labels = torch.unique(batch.targets[keep], return_inverse=True)
        loss = info_nce(h[keep], reps(candidates), labels, cfg.tau)
        if cfg.seq_seq_weight > 0:
            view = item_dropout(batch, cfg.item_drop) if self.training else batch
            last_target = last_positions(batch.targets.unsqueeze(-1), batch.lengths).squeeze(-1)
            a = last_positions(h, batch.lengths)
            b = last_positions(self._states(view, reps), view.lengths)
            loss = loss + cfg.seq_seq_weight * seq_seq_loss(a, b, last_target, cfg.tau)
        return loss

    # ------------------------------------------------------------------ fine-tuning and scoring

    def _output_items(self, z: torch.Tensor) -> torch.Tensor:
        """[n_items, H] normalised output side: the text content, plus the ID embedding if any."""
        if self.id_embedding is None:
            return F.normalize(z, dim=-1)
        return F.normalize(z + self.id_embedding(torch.arange(self.n_items, device=z.device)), dim=-1)

    def finetune_loss(self, batch: SequenceBatch) -> torch.Tensor:
        """Cross-entropy over all items of the cosine scores / tau."""
        keep = batch.targets != IGNORE
        z = self.item_encoders.encode_all()["text"]  # once: in training it is recomputed on every call
        h = self._states(batch, lambda items: z[items])
        return full_softmax_loss(F.normalize(h[keep], dim=-1), self._output_items(z), batch.targets[keep],
                                 scale=1 / self.config.tau, bias=self.negatives_bias,
                                 exclude=self.config.loss_exclusions(batch, keep))

    def user_vectors(self, batch: SequenceBatch) -> torch.Tensor:
        z = self.item_encoders.encode_all()["text"]
        return F.normalize(last_positions(self._states(batch, lambda items: z[items]), batch.lengths), dim=-1)

    def item_vectors(self) -> torch.Tensor:
        return self._output_items(self.item_encoders.encode_all()["text"])

    # ------------------------------------------------------------------ pre-trained weights

    def load_pretrained(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """Load a pre-trained encoder (the item-ID embeddings stay new); with ``fix_encoder``, as the
        official finetune.py, the position embedding and the transformer layers are then fixed."""
        missing = load_encoder(self, state_dict)
        if self.config.stage == "finetune" and self.config.fix_encoder:
            for module in (self.transformer.position, self.transformer.encoder):
                module.requires_grad_(False)
        return missing
