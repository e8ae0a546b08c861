"""UniSRec (Hou et al., KDD 2022): text-only universal sequence representations, pre-trained with
sequence-item and sequence-sequence contrast, then fine-tuned inductively or transductively.

Built from MP4SR's pieces with one modality (text): item encoder (attention pooling + MoE adaptor),
the causal transformer, the fine-tuning scores ``normalise(h) . normalise(z_j [+ E_id_j]) / tau`` over
all items (``id_embedding``: transductive; without: inductive, content only).

Pre-training: ``L = L_seq-item + lambda * L_seq-seq``. Seq-item: in-batch InfoNCE between the output
at each position and its next item's representation (repeats of the positive are not negatives).
Seq-seq: InfoNCE between a sequence and an item-dropout view of it (the other sequences' views are
negatives, those with the same next item are masked out).

Defaults of the official code (``props/UniSRec.yaml``, ``finetune.py``): hidden 300, 2 layers, 2 heads,
FFN 256, hidden / attention dropout 0.5, 8 experts, adaptor dropout 0.2, temperature 0.07,
lambda 1e-3, item drop ratio 0.2; fine-tuning a pre-trained model trains the adaptor and the ID
embeddings with the transformer fixed (``fix_encoder``). Differences, stated: the official adaptor is
parametric whitening experts with noisy gating and one text vector per item; here it is MP4SR's MoE
adaptor (an affine map and LayerNorm per expert, softmax gating) over the attention-pooled vectors of
the item (identical when an item has one vector). Pre-training uses the target domain, as MP4SR's
official code does (UniSRec pre-trains on five other Amazon domains).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from mp4sr.data.batching import IGNORE, PAD, SequenceBatch
from mp4sr.models.base import FINETUNING, PRETRAINING, TransformerConfig, register
from mp4sr.models.layers import last_positions
from mp4sr.models.mp4sr import MP4SR, PoolScorer, info_nce, item_dropout


class UniSRecConfig(TransformerConfig):
    stage: Literal["pretrain", "finetune"] = Field(
        "finetune", description="the objective; set by `mp4sr pretrain`, `finetune` and `run`")
    modalities: list[Literal["text"]] | None = Field(None, description="text only (unset: text, which the data must have)")
    hidden: int = Field(300, description="width of item representations and of the transformer")
    dropout: float = Field(0.5, description="dropout of embeddings and layers")
    pool_hidden: int = Field(64, description="attention pooling: d -> pool_hidden -> 1")
    pool_scorer: PoolScorer = Field("linear", description="attention pooling score: 'linear' or 'mlp' (see MP4SR)")
    experts: int = Field(8, description="experts of the MoE adaptor")
    adaptor_dropout: float = Field(0.2, description="dropout inside the MoE adaptor")
    tau: float = Field(0.07, description="temperature of the contrastive losses and of the next-item softmax")
    seq_seq_weight: float = Field(1e-3, description="lambda of the sequence-sequence contrast", json_schema_extra=PRETRAINING)
    item_drop: float = Field(0.2, description="item dropout of the sequence-sequence view", json_schema_extra=PRETRAINING)
    id_embedding: bool = Field(True, description="transductive (item-ID embeddings) or inductive (content only)",
                               json_schema_extra=FINETUNING)
    fix_encoder: bool = Field(True, description="from a pre-trained checkpoint: keep the transformer fixed",
                              json_schema_extra=FINETUNING)

    @property
    def freeze_encoder(self) -> bool:
        """MP4SR's 'train only the ID embeddings' switch, never used by UniSRec (see ``fix_encoder``)."""
        return False

    @property
    def encoder_lr_scale(self) -> float:
        """MP4SR's slower encoder in fine-tuning, not used by UniSRec (see ``fix_encoder``)."""
        return 1.0


def seq_seq_loss(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE of a_i against b (positive b_i); b_j with the same target as i is masked out."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau
    eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
    logits = logits.masked_fill((targets[:, None] == targets[None, :]) & ~eye, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


@register
class UniSRec(MP4SR):
    """UniSRec: text-only MoE-adapted item encoder; seq-item + seq-seq contrastive pre-training."""

    name = "unisrec"
    title = "UniSRec"
    Config = UniSRecConfig
    readable: ClassVar[tuple[str, ...]] = ("text",)
    # Settings of the two stages (what `mp4sr experiment` applies under an entry's own). Fine-tuning:
    # the official lr 1e-3, batch 2048, patience 10. Pre-training: lr 1e-3; the official batch 8192 is
    # for five large source domains, here the target domain is pre-trained with MP4SR's 1024 / 30 epochs.
    stage_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "pretrain": {"params": {"stage": "pretrain"},
                     "train": {"lr": 1e-3, "batch_size": 1024, "weight_decay": 0.0, "epochs": 30, "patience": 10}},
        "finetune": {"params": {"stage": "finetune"},
                     "train": {"lr": 1e-3, "batch_size": 2048, "weight_decay": 0.0, "patience": 10}},
    }

    def _states(self, batch: SequenceBatch, reps: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """[B, L, H] transformer outputs of a batch; ``reps(items)`` gives the items' representations."""
        real = batch.tokens != PAD
        return self._encode({"text": reps((batch.tokens - 1).clamp(min=0))}, real, None)["text"]

    def pretrain_loss(self, batch: SequenceBatch) -> torch.Tensor:
        cfg = self.config
        keep = batch.targets != IGNORE
        # Only the items this batch touches are encoded (the view's items are a subset of them).
        touched = torch.unique(torch.cat([batch.tokens[batch.tokens != PAD] - 1, batch.targets[keep]]))
        z = self.item_reps("text", touched)
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

    def load_pretrained(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        missing = super().load_pretrained(state_dict)
        if self.config.stage == "finetune" and self.config.fix_encoder:
            # As the official finetune.py: position embedding and transformer layers fixed.
            for module in (self.transformer.position, self.transformer.encoder):
                module.requires_grad_(False)
        return missing
