"""Test ranks of a trained run under both protocols (history kept and excluded), for paired tests.

    python scripts/test_ranks.py runs/toys/finetune      # writes test_ranks_history_{kept,excluded}.npy there

The run folder's ``best.pt`` is rebuilt with the dataset and feature stores it was trained on, as
``mp4sr serve`` does; each file holds the 0-based rank of every test user's target, in the order of
the leave-one-out split (the order of the experiment runner's ``test_ranks_*.npy``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from mp4sr.data import leave_one_out
from mp4sr.evaluate.ranking import full_ranking
from mp4sr.serve.recommender import Recommender


def main(folder: str) -> None:
    run = Path(folder)
    recommender = Recommender.load(run / "best.pt")
    split = leave_one_out(recommender.dataset)
    values = torch.from_numpy(split.dataset.sequences.items)
    for name, exclude in (("history_kept", False), ("history_excluded", True)):
        result = full_ranking(recommender.model.eval(), values, split.test, recommender.config.data.max_len,
                              (10, 20), 512, exclude)
        np.save(run / f"test_ranks_{name}.npy", result.ranks)
        print(name, " ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if k.startswith(("recall", "ndcg"))))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
