"""Batches built by vectorised indexing into the CSR item array (no Python loop over rows).

Item tokens in a batch are ``item index + 1``; 0 is padding. Sequences are right-padded to the
longest sequence of the batch, never to ``max_len``; training batches group similar lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from mp4sr.data.split import EvalSet, TrainExamples
from mp4sr.devices import to_device

IGNORE = -100
PAD = 0


@dataclass
class SequenceBatch:
    """A right-padded batch of item sequences.

    ``tokens``: [B, L] item index + 1 (0 = padding); ``lengths``: [B];
    ``targets``: [B, L] item index of the next item at each position (IGNORE where none), in training;
    ``next_items``: [B] item index to predict after the whole sequence, in evaluation;
    ``rows``: [B] which example (or user) each row is.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    rows: torch.Tensor
    targets: torch.Tensor | None = None
    next_items: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> "SequenceBatch":
        """The batch on ``device`` (through pinned memory, without waiting, when it is a GPU)."""
        move = lambda t: None if t is None else to_device(t, device)  # noqa: E731
        return SequenceBatch(
            move(self.tokens), move(self.lengths), move(self.rows), move(self.targets), move(self.next_items)
        )


def gather_windows(values: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded tokens of ``values[start[b]:end[b]]`` and a mask of real positions."""
    lengths = end - start
    width = int(lengths.max()) if len(lengths) else 0
    pos = torch.arange(width, device=values.device)
    idx = start[:, None] + pos[None, :]
    real = pos[None, :] < lengths[:, None]
    gathered = values[idx.clamp_(max=len(values) - 1)]
    tokens = torch.where(real, gathered + 1, torch.zeros_like(gathered))
    return tokens, real


def make_train_batch(values: torch.Tensor, examples: TrainExamples, rows: np.ndarray) -> SequenceBatch:
    start = torch.from_numpy(examples.start[rows])
    end = torch.from_numpy(examples.end[rows])
    tokens, real = gather_windows(values, start, end)
    lengths = end - start
    # The next item of position p is values[start + p + 1]; it always exists inside the training part.
    nxt, _ = gather_windows(values, start + 1, end + 1)
    targets = torch.where(real, nxt - 1, torch.full_like(nxt, IGNORE))
    if examples.last_only:
        last = torch.zeros_like(real)
        last[torch.arange(len(rows)), lengths - 1] = True
        targets = torch.where(last, targets, torch.full_like(targets, IGNORE))
    return SequenceBatch(tokens, lengths, torch.from_numpy(rows), targets=targets)


def train_batches(
    values: torch.Tensor,
    examples: TrainExamples,
    batch_size: int,
    generator: np.random.Generator,
    group_by_length: bool = True,
    group_factor: int = 50,
    rows_only: bool = False,
) -> Iterator[SequenceBatch] | Iterator[np.ndarray]:
    """Shuffled training batches. With ``group_by_length`` the examples are shuffled, cut into groups
    of ``group_factor`` batches, sorted by length inside each group, and the batches are shuffled
    again: padding stays small while batch composition stays random. ``rows_only``: yield each
    batch's example rows instead of the batch."""
    order = generator.permutation(len(examples))
    if group_by_length:
        lengths = (examples.end - examples.start)[order]
        group = batch_size * group_factor
        for g in range(0, len(order), group):
            seg = slice(g, g + group)
            order[seg] = order[seg][np.argsort(lengths[seg], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in generator.permutation(len(batches))]
    for rows in batches:
        yield rows if rows_only else make_train_batch(values, examples, rows)


def eval_batches(
    values: torch.Tensor, evalset: EvalSet, max_len: int, batch_size: int, shard: tuple[int, int] | None = None,
    max_tokens: int | None = None,
) -> Iterator[SequenceBatch]:
    """Evaluation batches of the last ``max_len`` history items, grouped by length; with
    ``shard=(i, n)`` only the examples whose index is i modulo n. A batch holds at most ``batch_size``
    examples and, with ``max_tokens``, at most that many padded positions (more short histories per
    batch, fewer long ones)."""
    start = np.maximum(evalset.hist_start, evalset.hist_end - max_len)
    order = np.argsort(evalset.hist_end - start, kind="stable")
    if shard is not None:
        order = order[order % shard[1] == shard[0]]
    lengths = (evalset.hist_end - start)[order]
    i = 0
    while i < len(order):
        j = min(i + batch_size, len(order))
        if max_tokens is not None:  # sorted ascending: the batch's width is its last length
            fits = np.searchsorted(lengths[i:j] * np.arange(1, j - i + 1), max_tokens, side="right")
            j = i + max(1, int(fits))
        rows = order[i:j]
        i = j
        s, e = torch.from_numpy(start[rows]), torch.from_numpy(evalset.hist_end[rows])
        tokens, _ = gather_windows(values, s, e)
        yield SequenceBatch(
            tokens, e - s, torch.from_numpy(rows), next_items=torch.from_numpy(evalset.targets[rows])
        )
