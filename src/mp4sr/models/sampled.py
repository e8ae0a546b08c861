"""Sampled softmax with log-Q correction: next-item training without scoring the whole catalogue.

A step scores each output against a candidate set instead of every item: the distinct target items
of the batch (in-batch negatives) plus ``negatives`` items drawn from ``q(j) ∝ count_j ** alpha``
(``alpha = 0``: uniform). Frequent items are candidates far more often than rare ones, which biases
a plain softmax over the candidates towards demoting them; the log-Q correction (Bengio & Senécal
2008; Yi et al., RecSys 2019) removes that bias by subtracting from each candidate's logit the log of
the probability that it is in the candidate set at all (candidates are unique),

    pi_j = 1 - (1 - p(j)) ** n_targets * (1 - q(j)) ** negatives,   p(j) = count_j / sum(count)

where ``p`` is the distribution the batch's targets are drawn from (item frequencies in training).
For rare items pi_j ≈ n_targets p(j) + negatives q(j), the expected count; for popular items, which
are in nearly every candidate set, it saturates at 1. A row's positive is never one of its negatives.

Cost per step: O(outputs x candidates) instead of O(outputs x items), and content-based models
compute representations of the candidates only.

``negatives_per="position"`` is the other common form (RecTools' SASRec, gSASRec): every output gets
its own ``negatives`` items drawn from ``q``, and its softmax runs over its positive and those alone,
with no in-batch negatives (a drawn item equal to the positive is masked). Its log-Q term is
``log q(j)``, the same for every candidate when ``q`` is uniform. The candidates are the union of
every output's items, so for long batches this costs about as much as the full softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from mp4sr.errors import ConfigError
from mp4sr.models.base import FINETUNING
from mp4sr.models.softmax import HistoryNegativesConfig


class LossConfig(HistoryNegativesConfig):
    """The next-item loss of models that can train with either softmax (in models with a pre-training
    stage, the fine-tuning loss: pre-training objectives have their own)."""

    loss: Literal["full", "sampled"] = Field(
        "full", description="softmax over every item, or over in-batch targets + sampled negatives with log-Q",
        json_schema_extra=FINETUNING)
    negatives: int = Field(1024, ge=0, description="sampled loss: negatives drawn per step (shared by the batch) "
                           "or per position (see negatives_per)", json_schema_extra=FINETUNING)
    negatives_per: Literal["step", "position"] = Field(
        "step", description="sampled loss: 'step': one set of negatives for the batch, with its targets as "
        "negatives too; 'position': each output's own negatives, and no in-batch ones (RecTools' SASRec)",
        json_schema_extra=FINETUNING)
    negative_alpha: float = Field(0.0, ge=0, description="sampled loss: negatives drawn with q ∝ count^alpha (0: uniform)",
                                  json_schema_extra=FINETUNING)
    logq: bool = Field(True, description="sampled loss: subtract the log of each candidate's inclusion probability",
                       json_schema_extra=FINETUNING)
    item_dropout: float = Field(0.0, ge=0, lt=1, description="dropout of the item representations that score the "
                                "outputs while training (RecTools' item net drops its embeddings wherever they are used)",
                                json_schema_extra=FINETUNING)

    @model_validator(mode="after")
    def _history_negatives_need_the_full_softmax(self):
        if not self.history_negatives and self.loss != "full":
            raise ValueError("history_negatives=false leaves items out of the full softmax: set loss=full with it")
        if not self.untrained_negatives and self.loss != "full":
            raise ValueError("untrained_negatives=false leaves items out of the full softmax: set loss=full with it")
        return self

    def sampler(self, context) -> "CandidateSampler | None":
        if self.loss != "sampled":
            return None
        return CandidateSampler(context.item_counts, context.n_items, self.negatives, self.negative_alpha, self.logq,
                                per_position=self.negatives_per == "position")


@dataclass
class Candidates:
    items: torch.Tensor  # [C] distinct item indexes
    labels: torch.Tensor  # [N] position of each output's target in ``items``
    log_q: torch.Tensor  # [C] log-probability of each candidate being in the set (the log-Q term)
    negatives: torch.Tensor | None = None  # [N, K] positions in ``items`` of each output's own negatives


class CandidateSampler:
    """Draws the candidate set of a step; ``item_counts`` are the items' training frequencies."""

    def __init__(self, item_counts: np.ndarray | None, n_items: int, negatives: int = 1024,
                 alpha: float = 0.0, logq: bool = True, per_position: bool = False):
        if negatives < 0:
            raise ConfigError(f"negatives must be >= 0, not {negatives}")
        if per_position and negatives < 1:
            raise ConfigError("negatives per position need params.negatives >= 1: the softmax of an output runs "
                              "over its positive and its own negatives")
        counts = np.ones(n_items) if item_counts is None else np.asarray(item_counts, dtype=np.float64)
        if len(counts) != n_items:
            raise ConfigError(f"item_counts has {len(counts)} entries for {n_items} items")
        data = counts / counts.sum() if counts.sum() > 0 else np.full(n_items, 1.0 / n_items)
        noise = np.power(np.maximum(counts, 0), alpha) if alpha else np.ones(n_items)
        noise = noise / noise.sum()
        self.n_items = n_items
        self.negatives = negatives
        self.logq = logq
        self.per_position = per_position
        self.p_data = torch.from_numpy(data).float()
        self.q_noise = torch.from_numpy(noise).float()
        self._uniform = not alpha

    def to(self, device) -> "CandidateSampler":
        self.p_data = self.p_data.to(device)
        self.q_noise = self.q_noise.to(device)
        return self

    def sample(self, targets: torch.Tensor, generator: torch.Generator | None = None) -> Candidates:
        """Candidates for the outputs whose next items are ``targets`` [N]."""
        device = targets.device
        if self.p_data.device != device:
            self.to(device)
        if self.per_position:
            return self._sample_per_position(targets, generator)
        drawn = targets
        if self.negatives:
            if self._uniform:
                noise = torch.randint(self.n_items, (self.negatives,), device=device, generator=generator)
            else:
                noise = torch.multinomial(self.q_noise, self.negatives, replacement=True, generator=generator)
            drawn = torch.cat([targets, noise])
        items, inverse = torch.unique(drawn, return_inverse=True)
        labels = inverse[: len(targets)]
        if self.logq:
            log_absent = len(targets) * torch.log1p(-self.p_data[items].clamp(max=1 - 1e-7))
            if self.negatives:
                log_absent = log_absent + self.negatives * torch.log1p(-self.q_noise[items].clamp(max=1 - 1e-7))
            log_q = torch.log((-torch.expm1(log_absent)).clamp_min(1e-30))
        else:
            log_q = torch.zeros(len(items), device=device)
        return Candidates(items, labels, log_q)

    def _sample_per_position(self, targets: torch.Tensor, generator: torch.Generator | None) -> Candidates:
        n, k = len(targets), self.negatives
        if self._uniform:
            noise = torch.randint(self.n_items, (n, k), device=targets.device, generator=generator)
        else:
            noise = torch.multinomial(self.q_noise, n * k, replacement=True, generator=generator).view(n, k)
        items, inverse = torch.unique(torch.cat([targets, noise.flatten()]), return_inverse=True)
        log_q = torch.log(self.q_noise[items]) if self.logq else torch.zeros(len(items), device=targets.device)
        return Candidates(items, inverse[:n], log_q, negatives=inverse[n:].view(n, k))


def sampled_softmax_loss(logits: torch.Tensor, candidates: Candidates, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of ``logits`` [N, C] (scores of the candidates, before the temperature) with
    the log-Q correction applied; with negatives per position, over each row's positive and its own
    negatives."""
    corrected = logits / temperature - candidates.log_q
    if candidates.negatives is None:
        return F.cross_entropy(corrected, candidates.labels)
    positive = corrected.gather(1, candidates.labels[:, None])
    negative = corrected.gather(1, candidates.negatives)
    negative = negative.masked_fill(candidates.negatives == candidates.labels[:, None], float("-inf"))
    row = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(row, torch.zeros(len(row), dtype=torch.long, device=row.device))
