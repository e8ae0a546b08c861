"""What the MP4SR epoch-time benchmarks share: a dataset's training context, and epochs of several
trainers timed in turn, round after round, so that every trainer sees the same machine load."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from mp4sr.data import LeaveOneOut, leave_one_out, load_dataset
from mp4sr.features import feature_stores
from mp4sr.models import ModelContext
from mp4sr.train.allocator import keep_freed_memory


def training_context(dataset_name: str, threads: int) -> tuple[LeaveOneOut, ModelContext]:
    """The leave-one-out split of ``dataset_name`` and a model context over its item vectors, with
    ``threads`` torch threads and the allocator settings Trainer.fit uses."""
    keep_freed_memory()
    torch.set_num_threads(threads)
    dataset = load_dataset(dataset_name)
    split = leave_one_out(dataset)
    stores = {m: s for m, s in feature_stores(dataset, progress=False).items() if s is not None}
    return split, ModelContext(dataset.n_items, 50, split.train_counts(), features=stores)


def median_epoch_seconds(trainers: dict, rounds: int) -> dict:
    """{key: median seconds of one training epoch} of ``trainers`` ({key: (Trainer, optimiser)})."""
    seconds = {key: [] for key in trainers}
    rng = np.random.default_rng(0)
    for r in range(rounds):
        for key, (trainer, optimizer) in trainers.items():
            start = time.perf_counter()
            trainer.train_epoch(optimizer, rng, r + 1)
            seconds[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in seconds.items()}
