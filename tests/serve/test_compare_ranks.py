"""A trained run's test ranks, stored by the run and ranked again from its best.pt for `mp4sr compare`."""

import json

import numpy as np
import torch

from mp4sr.evaluate.metrics import mean_metrics
from mp4sr.report.compare import run_ranks


def _repeats(split) -> np.ndarray:
    """Whether each test user's target is already in their history (excluding it then makes a miss)."""
    items, test = split.dataset.sequences.items, split.test
    return np.array([t in items[s:e] for s, e, t in zip(test.hist_start, test.hist_end, test.targets)])


def test_ranks_from_best_pt_reproduce_the_runs_own(checkpoints, split):
    run = checkpoints["sasrec"]
    stored = np.load(run / "test_ranks.npy")  # written by train_run
    measured = json.loads((run / "metrics.json").read_text())["test"]
    again = mean_metrics(torch.from_numpy(stored), (10, 20))
    for key in ("recall@10", "ndcg@10", "recall@20", "ndcg@20"):
        assert abs(again[key] - measured[key]) < 1e-9
    (run / "test_ranks.npy").rename(run / "stored.npy")
    try:
        kept = run_ranks(run, "history_kept")  # ranked again from best.pt, and saved
        assert np.array_equal(kept, stored) and (run / "test_ranks_history_kept.npy").is_file()
        excluded = run_ranks(run, "history_excluded")
        # removing the history only removes items ranked above the target, unless it is the target
        repeats = _repeats(split)
        assert (excluded[~repeats] <= kept[~repeats]).all() and (excluded < kept).any()
        assert (excluded[repeats] > kept[repeats]).all()
    finally:
        (run / "stored.npy").rename(run / "test_ranks.npy")
        for name in ("test_ranks_history_kept.npy", "test_ranks_history_excluded.npy"):
            (run / name).unlink(missing_ok=True)
