"""Training curves: a test panel appears when runs recorded the test set after every epoch."""

from __future__ import annotations

import matplotlib.image

from mp4sr.report.plots import training_curves


def _history(with_test: bool) -> list[dict]:
    rows = []
    for epoch in range(1, 6):
        row = {"epoch": epoch, "valid_ndcg@10": 0.01 * epoch}
        if with_test:
            row["test_ndcg@10"] = 0.009 * epoch
        rows.append(row)
    return rows


def test_training_curves_add_a_test_panel_only_when_recorded(tmp_path):
    roles = {"a": "reference", "b": "baseline"}
    valid_only = training_curves({("a", 1): _history(False), ("b", 1): _history(False)}, roles, "ndcg@10",
                                 tmp_path / "valid.png", "valid only")
    # one run with test curves is enough for the panel; the run without them is left out of it
    both = training_curves({("a", 1): _history(True), ("b", 1): _history(False)}, roles, "ndcg@10",
                           tmp_path / "both.png", "valid and test")
    width = {p.name: matplotlib.image.imread(p).shape[1] for p in (valid_only, both)}
    assert width["both.png"] > 1.4 * width["valid.png"]
