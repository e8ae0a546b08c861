"""One training reports both test protocols: the user's history items kept in the ranking and excluded."""

import json

import numpy as np
import yaml

from mp4sr.experiment import load_spec, make_plan, run_experiment
from mp4sr.experiment.runner import load_result

SPEC = {
    "name": "protocols",
    "datasets": [{"name": "amazon-scientific-mm", "protocol": "history_kept"},
                 {"name": "amazon-scientific-mm", "protocol": "history_excluded"}],
    "seeds": [1],
    "defaults": {"train": {"epochs": 2, "batch_size": 512, "progress": False, "threads": 1}},
    "reference": "sasrec",
    "metrics": ["recall@10", "ndcg@10"],
    "models": [{"name": "sasrec", "params": {"hidden": 16, "ffn": 32}}],
}


def test_two_protocols_of_a_dataset_share_their_runs(tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(SPEC))
    plan = make_plan(load_spec(tmp_path / "p.yaml"), tmp_path / "runs")
    assert len(plan.runs) == 1 and plan.runs[0].config.eval.test_both_protocols
    assert [(c.dataset, c.protocol) for c in plan.cells] == [
        ("amazon-scientific-mm", "history_kept"), ("amazon-scientific-mm-history-excluded", "history_excluded")]
    assert plan.cells[0].key == plan.cells[1].key


def test_the_run_ranks_the_test_set_both_ways(tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "out"
    run_experiment(tmp_path / "p.yaml", out=out)
    plan = make_plan(load_spec(tmp_path / "p.yaml"), (out / "runs").resolve())
    kept, excluded = (load_result((out / "runs").resolve(), cell) for cell in plan.cells)
    metrics = json.loads((out / "runs" / plan.cells[0].key / "metrics.json").read_text())
    assert metrics["test"] == metrics["test_by_protocol"]["history_kept"] == kept.test  # eval.exclude_history=false
    assert excluded.test == metrics["test_by_protocol"]["history_excluded"]
    # removing seen items can only lift a target that is not itself in the history, and sinks one that is
    assert not np.array_equal(kept.ranks, excluded.ranks)
    assert excluded.test["recall@10"] != kept.test["recall@10"]
    report = (out / "results.md").read_text()
    assert "amazon-scientific-mm-history-excluded" in report
