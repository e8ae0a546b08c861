"""mp4sr.report.compare: paired tests between finished runs, from their stored test ranks."""

import numpy as np
import pytest
import yaml

from mp4sr.errors import ConfigError
from mp4sr.report.compare import compare_runs, run_ranks


def _run(folder, ranks, name="test_ranks_history_excluded.npy", dataset="amazon-toys-mm", exclude=False):
    folder.mkdir(parents=True)
    np.save(folder / name, np.asarray(ranks, dtype=np.int32))
    (folder / "config.yaml").write_text(yaml.safe_dump({"dataset": dataset, "eval": {"exclude_history": exclude}}))
    return folder


def test_compare_averages_seeds_per_user_and_tests_the_difference(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 40, size=400)
    better = np.maximum(base - 8, 0)  # every user's item ranked higher
    a = [_run(tmp_path / "a1", better), _run(tmp_path / "a2", base)]
    b = [_run(tmp_path / "b1", base)]
    frame = compare_runs(a, b, "history_excluded", ks=(10,)).set_index("metric")
    recall = frame.loc["recall@10"]
    assert recall["a"] == pytest.approx(((better < 10).mean() + (base < 10).mean()) / 2)
    assert recall["b"] == pytest.approx((base < 10).mean())
    assert recall["change_pct"] == pytest.approx(100 * (recall["a"] / recall["b"] - 1))
    assert recall["p_ttest"] < 1e-6 and recall["p_wilcoxon"] < 1e-6 and recall["n_users"] == 400
    assert 0 < recall["detectable_pct"] < recall["change_pct"]
    assert set(frame.index) == {"recall@10", "ndcg@10"}
    same = compare_runs(b, b, "history_excluded", ks=(10,)).set_index("metric")
    assert same.loc["ndcg@10", "change_pct"] == 0 and np.isnan(same.loc["ndcg@10", "p_ttest"])


def test_a_runs_own_ranking_serves_its_protocol(tmp_path):
    """test_ranks.npy holds the ranking the run's config asked for: it answers for that protocol only."""
    run = _run(tmp_path / "run", [0, 3, 12], name="test_ranks.npy", exclude=True)
    assert run_ranks(run, "history_excluded").tolist() == [0, 3, 12]
    assert run_ranks(run).tolist() == [0, 3, 12]
    with pytest.raises(ConfigError, match="no test ranks for history_kept and no best.pt"):
        run_ranks(run, "history_kept")
    with pytest.raises(ConfigError, match="protocol 'excluded'"):
        run_ranks(run, "excluded")


def test_an_end_to_end_run_folder_compares_by_its_fine_tuning(tmp_path):
    _run(tmp_path / "all" / "finetune", [1, 2, 7, 0], name="test_ranks.npy")
    _run(tmp_path / "other", [5, 9, 3, 6], name="test_ranks.npy")
    frame = compare_runs([tmp_path / "all"], [tmp_path / "other"], ks=(5,)).set_index("metric")
    assert frame.loc["recall@5", "a"] == 0.75 and frame.loc["recall@5", "b"] == 0.25


def test_runs_of_other_test_sets_are_refused(tmp_path):
    b = [_run(tmp_path / "b", np.arange(20))]
    with pytest.raises(ConfigError, match="A ranks 10 test users and B 20"):
        compare_runs([_run(tmp_path / "short", np.arange(10))], b, "history_excluded")
    with pytest.raises(ConfigError, match="rank different numbers of test users"):
        compare_runs([b[0], tmp_path / "short"], b, "history_excluded")
    with pytest.raises(ConfigError, match="different datasets"):
        compare_runs([_run(tmp_path / "beauty", np.arange(20), dataset="amazon-beauty-ids")], b, "history_excluded")
    with pytest.raises(ConfigError, match="no such run folder"):
        compare_runs([tmp_path / "missing"], b)
