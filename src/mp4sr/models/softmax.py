"""The full softmax over the catalogue, computed a block of rows at a time.

Next-item training with the full softmax scores every output against every item: for ``N`` outputs
and ``V`` items, ``F.cross_entropy(outputs @ items.T, targets)`` holds the ``[N, V]`` scores, their
softmax and their gradient at once (on Toys, a batch of 512 sequences is about 3,600 outputs and
170 MB of scores per copy). :func:`full_softmax_loss` gives the same loss and gradients from blocks
of rows small enough for the allocator to reuse from one block, and one step, to the next: on the
CPU, glibc's malloc maps every block over 32 MiB afresh and returns it when freed (see
``mp4sr.train.allocator``), so each step would otherwise touch its scores page by page again.

Each block's gradients are computed in the forward pass, while its scores are at hand (the form of
fused linear cross-entropy losses), so nothing of size ``[N, V]`` is kept for the backward pass and
no score is computed twice. Under autocast, when no gradient is needed, and when all the scores fit
one block, the plain form runs.

``exclude`` leaves items out of a row's softmax: :func:`seen_items` gives, for each training output, the
items earlier in its sequence, which ``params.history_negatives=false`` keeps from being its negatives.
``bias`` adds a score to every item in every row: ``params.untrained_negatives=false`` puts ``-inf`` at the
items without a training interaction, which leaves them out of every softmax.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from mp4sr.data.batching import IGNORE, SequenceBatch
from mp4sr.models.base import FINETUNING, ModelConfig

# Bytes of scores per block: below glibc's 32 MiB mmap threshold on the CPU (the scores and their
# softmax share one buffer); on accelerators, whose allocators cache blocks anyway, blocks only
# bound the memory.
CPU_BLOCK_BYTES = 16 * 2**20
DEVICE_BLOCK_BYTES = 256 * 2**20


class HistoryNegativesConfig(ModelConfig):
    """Whether the items a sequence already holds are negatives of its next item in the full softmax."""

    history_negatives: bool = Field(
        True, description="the items earlier in a sequence are negatives of its next item in the softmax (the "
        "full softmax's own form); false leaves them out of it, as the original SASRec draws its negatives "
        "outside the user's items and as ranking with eval.exclude_history=true removes them (the items of "
        "the model's window of max_len; a repeat of the target stays the target)", json_schema_extra=FINETUNING)

    untrained_negatives: bool = Field(
        True, description="the items without a training interaction (new items, the held-out items of a "
        "cold-item split) are negatives in the softmax (the full softmax's own form); false leaves them out of "
        "it, so that training never pushes their scores down: a model that scores items by their content "
        "(MP4SR, UniSRec, SASRecM) then ranks them where the content, and the pre-trained encoder, puts them "
        "(MP4SR's and UniSRec's item-ID embeddings of these items start and stay at zero, as those of items "
        "added after training are)",
        json_schema_extra=FINETUNING)

    def negatives_bias(self, item_counts: np.ndarray | None) -> torch.Tensor | None:
        """[n_items] what ``full_softmax_loss`` adds to every row's scores (``bias``): ``-inf`` at the
        items with no training interaction when ``untrained_negatives`` is false; None when nothing is
        left out."""
        if self.untrained_negatives or item_counts is None or np.all(item_counts > 0):
            return None
        untrained = torch.as_tensor(np.asarray(item_counts) == 0)
        return torch.zeros(len(untrained)).masked_fill_(untrained, float("-inf"))

    def loss_exclusions(self, batch: SequenceBatch, keep: torch.Tensor) -> torch.Tensor | None:
        """What ``full_softmax_loss`` leaves out of each output's softmax (``exclude``): None, or the
        seen items of the outputs ``keep`` selects."""
        return None if self.history_negatives else seen_items(batch, keep)


def seen_items(batch: SequenceBatch, keep: torch.Tensor | None = None) -> torch.Tensor:
    """[N, L] the items (indexes) at or before the position of each training output, -1 elsewhere and
    where an item is that output's own target: what a softmax without history negatives leaves out.
    The outputs are the positions ``keep`` selects (default: those with a target), in the order
    ``hidden[keep]`` gives them."""
    keep = batch.targets != IGNORE if keep is None else keep
    rows, position = keep.nonzero(as_tuple=True)
    seen = batch.tokens[rows] - 1  # tokens are item index + 1, padding 0 -> -1
    later = torch.arange(seen.shape[1], device=seen.device)[None, :] > position[:, None]
    return seen.masked_fill(later | (seen == batch.targets[rows, position][:, None]), -1)


def full_softmax_loss(outputs: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, scale: float = 1.0,
                      bias: torch.Tensor | None = None, block_rows: int | None = None,
                      exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``scale * outputs @ items.T + bias`` against ``targets``.

    ``outputs`` [N, D], ``items`` [V, D], ``targets`` [N] in ``0..V-1``, ``bias`` [V] or None.
    ``exclude`` [N, K]: items (indexes, -1 for none) left out of each row's softmax, never its target
    (:func:`seen_items`). ``block_rows`` sets the rows per block (default: as many as fit the block size of
    the device; when every row fits one block, the plain form runs).
    Equal to ``F.cross_entropy(scale * outputs @ items.T + bias, targets)`` (with the excluded scores at
    -inf) up to rounding, with the same gradients for ``outputs``, ``items`` and ``bias``.
    """
    device = outputs.device.type
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (outputs, items, bias))
    if block_rows is None:
        budget = CPU_BLOCK_BYTES if device == "cpu" else DEVICE_BLOCK_BYTES
        block_rows = max(1, budget // (items.shape[0] * items.element_size()))
        if block_rows >= len(outputs):  # one block: the plain form, which is as fast
            block_rows = 0
    if not block_rows or not needs_grad or torch.is_autocast_enabled(device):
        scores = _scores(outputs, items, scale, bias)
        return F.cross_entropy(scores if exclude is None else _excluded(scores, exclude, inplace=False), targets)
    return _BlockedSoftmaxLoss.apply(outputs, items, bias, targets, exclude, float(scale), int(block_rows))


def _excluded(scores: torch.Tensor, exclude: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``scores`` with ``-inf`` at the items ``exclude`` names for each row."""
    rows, cols = (exclude >= 0).nonzero(as_tuple=True)
    index = (rows, exclude[rows, cols])
    minus_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    return scores.index_put_(index, minus_inf) if inplace else scores.index_put(index, minus_inf)


def _scores(outputs: torch.Tensor, items: torch.Tensor, scale: float, bias: torch.Tensor | None) -> torch.Tensor:
    if bias is None:
        return torch.mm(outputs, items.T).mul_(scale) if scale != 1.0 else outputs @ items.T
    return torch.addmm(bias, outputs, items.T, alpha=scale)


class _BlockedSoftmaxLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, outputs, items, bias, targets, exclude, scale, block_rows):
        n = outputs.shape[0]
        grad_outputs = torch.empty_like(outputs)
        grad_items = torch.zeros_like(items)
        # a constant bias (untrained_negatives=false) needs no gradient: no column sums per block
        grad_bias = torch.zeros_like(bias) if bias is not None and bias.requires_grad else None
        total = torch.zeros((), dtype=torch.float64, device=outputs.device)
        for start in range(0, n, block_rows):
            out, tgt = outputs[start:start + block_rows], targets[start:start + block_rows]
            scores = _scores(out, items, scale, bias)
            if exclude is not None:
                _excluded(scores, exclude[start:start + block_rows], inplace=True)
            rows = torch.arange(len(tgt), device=tgt.device)
            # torch's fused softmax is several times faster on the CPU than exp; the log-sum-exp
            # follows from the probability of each row's top score, which is at least 1/V
            top, top_item = scores.max(dim=1)
            grad = torch.softmax(scores, dim=1)
            lse = top - grad[rows, top_item].log()
            total += (lse - scores[rows, tgt]).sum(dtype=torch.float64)
            # d(mean loss)/d(scores) = (softmax - one-hot) / n
            grad[rows, tgt] -= 1.0
            grad.div_(n)
            torch.mm(grad, items, out=grad_outputs[start:start + block_rows])
            grad_items.addmm_(grad.T, out)
            if grad_bias is not None:
                grad_bias += grad.sum(dim=0)
        if scale != 1.0:
            grad_outputs.mul_(scale)
            grad_items.mul_(scale)
        ctx.save_for_backward(grad_outputs, grad_items, grad_bias)
        ctx.bias_grad = grad_bias is not None
        return (total / n).to(outputs.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        grad_outputs, grad_items, grad_bias = ctx.saved_tensors
        return (grad_outputs * grad_loss, grad_items * grad_loss,
                grad_bias * grad_loss if ctx.bias_grad else None, None, None, None, None)
