"""scripts/test_ranks.py: a trained run's test ranks, as the run itself measured them."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from mp4sr.evaluate.metrics import mean_metrics

SCRIPT = Path(__file__).parents[2] / "scripts" / "test_ranks.py"


def test_test_ranks_reproduce_the_runs_own_test_metrics(checkpoints):
    spec = importlib.util.spec_from_file_location("test_ranks_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run = checkpoints["sasrec"]
    script.main(str(run))
    kept = np.load(run / "test_ranks_history_kept.npy")
    excluded = np.load(run / "test_ranks_history_excluded.npy")
    assert kept.shape == excluded.shape and not np.array_equal(kept, excluded)
    measured = json.loads((run / "metrics.json").read_text())["test"]
    again = mean_metrics(torch.from_numpy(kept), (10, 20))
    for key in ("recall@10", "ndcg@10", "recall@20", "ndcg@20"):
        assert abs(again[key] - measured[key]) < 1e-9
