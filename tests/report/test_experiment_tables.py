import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from mp4sr.evaluate.metrics import mean_metrics
from mp4sr.report.experiment import (
    RunResult, ablation_frame, minimal_detectable_effect, significance_frame, summary_frame, write_experiment_report,
)

METRICS = ["recall@10", "ndcg@10"]


def _run(entry: str, role: str, seed: int, ranks: np.ndarray) -> RunResult:
    test = mean_metrics(torch.as_tensor(ranks), [10])
    return RunResult(entry, role, "d", seed, "", valid=dict(test), test=test, ranks=ranks)


@pytest.fixture(scope="module")
def results() -> list[RunResult]:
    """Three entries x two seeds over 3,000 users: the reference ranks targets better than the ablation,
    and a baseline ranks them worse still."""
    rng = np.random.default_rng(0)
    out = []
    for seed in (1, 2):
        base = rng.geometric(0.08, 3000) - 1
        out += [_run("pop", "baseline", seed, base + rng.integers(0, 6, 3000)),
                _run("mp4sr", "reference", seed, base),
                _run("mp4sr-worse", "ablation", seed, base + rng.integers(0, 3, 3000))]
    return out


def _users(results, entry, metric):
    """Per-user metric averaged over seeds, computed directly."""
    per_seed = []
    for r in results:
        if r.entry == entry:
            ranks = r.ranks.astype(float)
            per_seed.append((ranks < 10) * (1.0 if metric == "recall@10" else 1.0 / np.log2(ranks + 2)))
    return np.mean(per_seed, axis=0)


def test_minimal_detectable_effect_is_the_paired_t_tests_power_formula():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.1, 0.3, 5000), rng.normal(0.1, 0.3, 5000)
    sd = np.std(a - b, ddof=1)
    assert minimal_detectable_effect(a, b) == pytest.approx((1.959964 + 0.841621) * sd / np.sqrt(5000), rel=1e-5)
    assert minimal_detectable_effect(a, b, power=0.5) == pytest.approx(1.959964 * sd / np.sqrt(5000), rel=1e-5)
    assert np.isnan(minimal_detectable_effect(a[:1], b[:1]))


def test_a_true_difference_of_the_detectable_size_is_found_four_times_in_five():
    rng = np.random.default_rng(2)
    n, sd = 2000, 1.0
    effect = minimal_detectable_effect(rng.normal(0, sd, n), np.zeros(n))
    found = [stats.ttest_rel(rng.normal(effect, sd, n), np.zeros(n)).pvalue < 0.05 for _ in range(400)]
    assert 0.74 < np.mean(found) < 0.86


def test_ablations_are_compared_with_the_reference_user_by_user(results):
    summary = summary_frame(results, METRICS)
    frame = ablation_frame(results, summary, METRICS)
    assert list(frame["ablation"]) == ["mp4sr-worse", "mp4sr-worse"] and (frame["reference"] == "mp4sr").all()
    for _, row in frame.iterrows():
        a, b = _users(results, "mp4sr-worse", row["metric"]), _users(results, "mp4sr", row["metric"])
        assert row["ablation_mean"] == pytest.approx(a.mean()) and row["reference_mean"] == pytest.approx(b.mean())
        assert row["change_pct"] == pytest.approx(100 * (a.mean() / b.mean() - 1))
        assert row["change_pct"] < 0 and row["n_users"] == 3000
        assert row["p"] == row["p_ttest"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
        assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
        assert row["detectable_pct"] == pytest.approx(100 * minimal_detectable_effect(a, b) / b.mean())


def test_the_reference_is_compared_with_the_best_baseline_only(results):
    frame = significance_frame(results, summary_frame(results, METRICS), METRICS, test="wilcoxon")
    assert list(frame["best_baseline"]) == ["pop", "pop"]
    assert (frame["improvement_pct"] > 0).all() and (frame["p"] == frame["p_wilcoxon"]).all()
    assert (frame["detectable_pct"] > 0).all()


def test_report_has_the_ablation_table(results, tmp_path):
    files = write_experiment_report(results, tmp_path, METRICS, "ndcg@10", plots=False)
    text = files["results_md"].read_text()
    assert "## Ablations against the reference" in text and "### d (against mp4sr)" in text
    ablation_part = text[text.index("## Ablations"):]
    row = next(line for line in ablation_part.splitlines() if line.startswith("| mp4sr-worse |"))
    assert row.count("[") == len(METRICS) and row.count("| -") == len(METRICS)
    assert list(pd.read_csv(files["ablations_csv"])["metric"]) == METRICS


def test_no_reference_no_ablation_table(results, tmp_path):
    baselines_only = [r for r in results if r.role == "baseline"]
    files = write_experiment_report(baselines_only, tmp_path, METRICS, "ndcg@10", plots=False)
    assert "## Ablations" not in files["results_md"].read_text()
    assert files["ablations_csv"].read_text().strip() == ""
