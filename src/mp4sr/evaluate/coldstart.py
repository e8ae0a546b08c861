"""Cold-start evaluation: metrics per group of users, and a split whose held-out items never train.

Groups (MP4SR.md section 5): the test item's number of training interactions (0, 1-5, 6-20, >20)
and the user's history length (1-3, 4-7, 8-15, >15 items before the test item). ``coldstart_table``
turns per-user test ranks (``TrainResult.test_ranks``, in the order of ``split.test``) into one row
per group.

``cold_item_split`` builds the harder setting: a random ``fraction`` of the items (seeded) is held
out. Every occurrence of a held-out item is removed from every sequence except where it is a user's
last (test) item, so those items never appear in training, validation or any history; users left
with fewer than 3 items are dropped. Content models without item-ID embeddings (inductive ones) can
rank the held-out items from their text and images. ID-only models and the ID part of the others are
evaluated as they are: the ID embedding of a held-out item keeps its random initialisation (it never
receives a gradient as a target or an input), so these models are not expected to rank those items
well; the table reports it rather than hiding it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mp4sr.data.dataset import Dataset, Sequences
from mp4sr.data.split import LeaveOneOut
from mp4sr.errors import DataError
from mp4sr.evaluate.metrics import DEFAULT_KS, metrics_from_ranks

# (label, lowest, highest) with inclusive bounds; None = no upper bound.
ITEM_GROUPS: tuple[tuple[str, int, int | None], ...] = (("0", 0, 0), ("1-5", 1, 5), ("6-20", 6, 20), (">20", 21, None))
HISTORY_GROUPS: tuple[tuple[str, int, int | None], ...] = (
    ("1-3", 1, 3), ("4-7", 4, 7), ("8-15", 8, 15), (">15", 16, None))


def assign_groups(values: np.ndarray, groups=ITEM_GROUPS) -> np.ndarray:
    """The label of the group each value falls in ('' for none)."""
    labels = np.full(len(values), "", dtype=object)
    for label, low, high in groups:
        labels[(values >= low) & (values <= (np.inf if high is None else high))] = label
    return labels


def user_attributes(split: LeaveOneOut) -> dict[str, np.ndarray]:
    """Per test user: training interactions of the test item, and history length (items before it)."""
    return {
        "item_count": split.train_counts()[split.test.targets],
        "history": split.test.hist_end - split.test.hist_start,
    }


def coldstart_table(ranks: np.ndarray, split: LeaveOneOut, ks=DEFAULT_KS,
                    item_groups=ITEM_GROUPS, history_groups=HISTORY_GROUPS) -> pd.DataFrame:
    """One row per group: ``by`` (item_count | history), ``group``, ``n_users`` and mean metrics
    (NaN for an empty group). ``ranks``: 0-based test ranks in the order of ``split.test``."""
    if len(ranks) != len(split.test):
        raise DataError(f"{len(ranks)} ranks for {len(split.test)} test users: were they computed on this split?")
    per_user = {k: v.numpy() for k, v in metrics_from_ranks(torch.as_tensor(ranks), ks).items()}
    attributes = user_attributes(split)
    rows = []
    for by, groups in (("item_count", item_groups), ("history", history_groups)):
        labels = assign_groups(attributes[by], groups)
        for label, _, _ in groups:
            members = labels == label
            means = {k: float(v[members].mean()) if members.any() else float("nan") for k, v in per_user.items()}
            rows.append({"by": by, "group": label, "n_users": int(members.sum()), **means})
    return pd.DataFrame(rows)


@dataclass
class ColdItemSplit:
    """A dataset whose ``cold_items`` occur only as test items, and which original users it keeps."""

    dataset: Dataset
    cold_items: np.ndarray
    users: np.ndarray  # index in the original dataset of each kept user


def cold_item_split(dataset: Dataset, fraction: float = 0.2, seed: int = 0, min_length: int = 3) -> ColdItemSplit:
    """Hold out a random ``fraction`` of the items (see the module docstring); run ``leave_one_out`` on
    the returned dataset. The item catalogue is unchanged, so item features still line up."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"cold-item fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    cold_items = np.sort(rng.choice(dataset.n_items, size=max(1, round(fraction * dataset.n_items)), replace=False))
    is_cold = np.zeros(dataset.n_items, dtype=bool)
    is_cold[cold_items] = True
    seqs = dataset.sequences
    user = np.repeat(np.arange(dataset.n_users), seqs.lengths)
    is_last = np.zeros(len(seqs.items), dtype=bool)
    is_last[seqs.offsets[1:] - 1] = True
    keep = ~is_cold[seqs.items] | is_last
    lengths = np.bincount(user[keep], minlength=dataset.n_users)
    kept_users = np.flatnonzero(lengths >= min_length)
    keep &= np.isin(user, kept_users)
    offsets = np.concatenate([[0], np.cumsum(lengths[kept_users])])
    derived = dataclasses.replace(
        dataset, user_ids=dataset.user_ids[kept_users], sequences=Sequences(offsets, seqs.items[keep])
    )
    return ColdItemSplit(derived, cold_items, kept_users)
