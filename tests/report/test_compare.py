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


def _record(folder, key_dataset):
    (folder / "run.json").write_text(f'{{"dataset": "{key_dataset}"}}')
    return folder


def test_groups_of_a_cold_item_split_are_tested_apart(tmp_path):
    """--by held_out: the users whose test item the split held out, and the others, each with its own test;
    the split is read from the record's dataset name (amazon-scientific-mm-cold20)."""
    from mp4sr.data import leave_one_out, load_dataset
    from mp4sr.evaluate.coldstart import cold_item_split

    cold = cold_item_split(load_dataset("amazon-scientific-mm"), 0.2, 0)
    held = np.isin(leave_one_out(cold.dataset).test.targets, cold.cold_items)
    n = len(held)
    base = np.full(n, 30)
    better = np.where(held, np.random.default_rng(0).integers(0, 12, size=n), 30)  # only the held-out items move up
    a = _record(_run(tmp_path / "a", better, dataset="amazon-scientific-mm"), "amazon-scientific-mm-cold20")
    b = _record(_run(tmp_path / "b", base, dataset="amazon-scientific-mm"), "amazon-scientific-mm-cold20")
    frame = compare_runs([a], [b], "history_excluded", ks=(10,), by="held_out").set_index(["group", "metric"])
    assert list(dict.fromkeys(frame.index.get_level_values(0))) == ["all", "held-out items", "other items"]
    assert frame.loc[("held-out items", "recall@10"), "n_users"] == held.sum() > 0
    assert frame.loc[("other items", "recall@10"), "n_users"] == n - held.sum()
    assert frame.loc[("held-out items", "recall@10"), "a"] == pytest.approx((better[held] < 10).mean())
    assert frame.loc[("held-out items", "recall@10"), "b"] == 0.0 and frame.loc[("held-out items", "recall@10"), "p_ttest"] < 1e-6
    assert np.isnan(frame.loc[("other items", "ndcg@10"), "p_ttest"])  # identical there
    assert frame.loc[("all", "recall@10"), "a"] == pytest.approx((better < 10).mean())

    by_count = compare_runs([a], [b], "history_excluded", ks=(10,), by="item_count")
    counts = by_count[(by_count.metric == "recall@10") & (by_count.group != "all")].set_index("group")["n_users"]
    assert counts.sum() == n and counts["0"] >= held.sum()  # every held-out test item has no training interaction
    with pytest.raises(ConfigError, match="--cold-items"):  # the record's split is not the one asked for
        compare_runs([a], [b], "history_excluded", by="held_out", cold_items=0.3)


def test_held_out_groups_need_a_cold_item_split(tmp_path):
    from mp4sr.data import leave_one_out, load_dataset

    n = len(leave_one_out(load_dataset("amazon-scientific-mm")).test)
    a = _run(tmp_path / "a", np.zeros(n), dataset="amazon-scientific-mm")
    with pytest.raises(ConfigError, match="holds no item out"):
        compare_runs([a], [a], "history_excluded", by="held_out")
    by_history = compare_runs([a], [a], "history_excluded", ks=(10,), by="history")
    assert by_history[by_history.group != "all"].n_users.sum() == 2 * n  # two metrics a group
    with pytest.raises(ConfigError, match="by 'users'"):
        compare_runs([a], [a], by="users")
