"""Leave-one-out splits and the training / evaluation examples derived from them.

Every example is a window ``[start, end)`` into the dataset's CSR ``items`` array, so no sequence is
ever copied: batches are assembled by indexing (see ``mp4sr.data.batching``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from mp4sr.data.dataset import Dataset
from mp4sr.errors import DataError

TrainingMode = Literal["sequence", "prefix"]


@dataclass
class EvalSet:
    """One evaluation example per user: history = items[hist_start:hist_end], next item = target."""

    users: np.ndarray
    hist_start: np.ndarray
    hist_end: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class TrainExamples:
    """Input windows ``items[start:end]``; the target of position p is ``items[start + p + 1]``.

    In ``sequence`` mode every position of a window is a training target; in ``prefix`` mode only the
    last one is (one example per prefix, as RecBole and UniSRec build them).
    """

    start: np.ndarray
    end: np.ndarray
    last_only: bool

    def __len__(self) -> int:
        return len(self.start)


@dataclass
class LeaveOneOut:
    """Last item of each user is the test target, the second-to-last the validation target."""

    dataset: Dataset
    train_start: np.ndarray  # the training part of user u is items[train_start[u]:train_end[u]]
    train_end: np.ndarray
    valid: EvalSet
    test: EvalSet

    def train_counts(self) -> np.ndarray:
        """Number of training interactions of each item (the training parts of all sequences)."""
        mask = _ranges_mask(self.train_start, self.train_end, len(self.dataset.sequences.items))
        return np.bincount(self.dataset.sequences.items[mask], minlength=self.dataset.n_items)

    def train_examples(self, mode: TrainingMode = "sequence", max_len: int = 50) -> TrainExamples:
        if mode == "sequence":
            return _sequence_windows(self.train_start, self.train_end, max_len)
        if mode == "prefix":
            return _prefix_windows(self.train_start, self.train_end, max_len)
        raise DataError(f"unknown training mode {mode!r}: use 'sequence' or 'prefix'")


def leave_one_out(dataset: Dataset, min_length: int = 3) -> LeaveOneOut:
    """Split every user's sequence by time: [... train ...][valid][test].

    Users with fewer than ``min_length`` (at least 3) interactions have nothing to train on and are
    refused: filter them first (k-core) rather than silently dropping them here.
    """
    offsets = dataset.sequences.offsets
    lengths = np.diff(offsets)
    short = np.flatnonzero(lengths < max(3, min_length))
    if len(short):
        raise DataError(
            f"dataset {dataset.name}: {len(short)} users have fewer than {max(3, min_length)} interactions "
            f"(e.g. user {dataset.user_ids[short[0]]!s}); leave-one-out needs at least 3. "
            "Filter the data with a k-core (users >= 5) first."
        )
    users = np.arange(dataset.n_users, dtype=np.int64)
    start, end = offsets[:-1], offsets[1:]
    items = dataset.sequences.items
    valid = EvalSet(users, start.copy(), end - 2, items[end - 2])
    test = EvalSet(users, start.copy(), end - 1, items[end - 1])
    return LeaveOneOut(dataset, start.copy(), end - 2, valid, test)


def _ranges_mask(start: np.ndarray, end: np.ndarray, size: int) -> np.ndarray:
    delta = np.zeros(size + 1, dtype=np.int64)
    np.add.at(delta, start, 1)
    np.add.at(delta, end, -1)
    return np.cumsum(delta[:-1]) > 0


def _sequence_windows(start: np.ndarray, end: np.ndarray, max_len: int) -> TrainExamples:
    """Whole-sequence windows. A training part of n items gives n - 1 targets; parts longer than
    ``max_len + 1`` are cut into several windows, from the end, so that every target is predicted once."""
    n_inputs = np.maximum(end - start - 1, 0)  # positions that have a next item
    n_windows = -(-n_inputs // max_len)  # ceil
    user = np.repeat(np.arange(len(start)), n_windows)
    # k-th window from the end of its user (0 = last window)
    first = np.cumsum(n_windows) - n_windows
    k = np.arange(len(user)) - np.repeat(first, n_windows)
    w_end = (end - 1)[user] - k * max_len  # exclusive end of the input window
    w_start = np.maximum(start[user], w_end - max_len)
    return TrainExamples(w_start.astype(np.int64), w_end.astype(np.int64), last_only=False)


def _prefix_windows(start: np.ndarray, end: np.ndarray, max_len: int) -> TrainExamples:
    """One example per target position t (history = the up to ``max_len`` items before it)."""
    n_targets = np.maximum(end - start - 1, 0)
    user = np.repeat(np.arange(len(start)), n_targets)
    first = np.cumsum(n_targets) - n_targets
    t = start[user] + 1 + (np.arange(len(user)) - np.repeat(first, n_targets))
    w_start = np.maximum(start[user], t - max_len)
    return TrainExamples(w_start.astype(np.int64), t.astype(np.int64), last_only=True)
