"""The tables of an experiment: mean +- std over seeds, the reference against the best baseline, each
ablation against the reference, and cold-start groups; Markdown and CSV, plus the plots of
``mp4sr.report.plots``.

Input: one ``RunResult`` per finished final run (entry, dataset, seed, grid point, metrics, per-user
test ranks, epoch history). Where an entry has a hyper-parameter grid, the point with the best mean
validation ``select_metric`` over seeds is kept, per dataset, and only it enters the tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mp4sr.evaluate.coldstart import coldstart_table
from mp4sr.evaluate.metrics import metrics_from_ranks

ROLE_ORDER = {"baseline": 0, "reference": 1, "ablation": 2}


@dataclass
class RunResult:
    entry: str
    role: str
    dataset: str
    seed: int
    point: str
    valid: dict[str, float]
    test: dict[str, float]
    ranks: np.ndarray
    history: list[dict[str, Any]] = field(default_factory=list)


def select_points(results: list[RunResult], metric: str) -> list[RunResult]:
    """Keep, per (dataset, entry), the runs of the grid point with the best mean validation ``metric``."""
    frame = pd.DataFrame([(r.dataset, r.entry, r.point, r.valid[metric]) for r in results],
                         columns=["dataset", "entry", "point", "valid"])
    if frame.empty:
        return []
    means = frame.groupby(["dataset", "entry", "point"], sort=False)["valid"].mean().reset_index()
    best = means.loc[means.groupby(["dataset", "entry"], sort=False)["valid"].idxmax()]
    chosen = set(zip(best["dataset"], best["entry"], best["point"]))
    return [r for r in results if (r.dataset, r.entry, r.point) in chosen]


def summary_frame(results: list[RunResult], metrics: list[str]) -> pd.DataFrame:
    """One row per (dataset, entry): role, chosen grid point, number of seeds, mean and std of each metric."""
    rows = [{"dataset": r.dataset, "entry": r.entry, "role": r.role, "point": r.point, "seed": r.seed,
             **{m: r.test[m] for m in metrics}} for r in results]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    grouped = frame.groupby(["dataset", "entry"], sort=False)
    out = grouped.agg(role=("role", "first"), point=("point", "first"), n_seeds=("seed", "nunique"))
    for m in metrics:
        out[f"{m}_mean"] = grouped[m].mean()
        out[f"{m}_std"] = grouped[m].std(ddof=1).fillna(0.0)
    out = out.reset_index()
    out["_order"] = out["role"].map(ROLE_ORDER)
    return out.sort_values(["dataset", "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)


def per_user_metrics(results: list[RunResult], ks) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """(dataset, entry) -> metric -> per-user values averaged over seeds."""
    stacked: dict[tuple[str, str], list[dict[str, np.ndarray]]] = {}
    for r in results:
        values = {k: v.numpy() for k, v in metrics_from_ranks(torch.as_tensor(r.ranks), ks).items()}
        stacked.setdefault((r.dataset, r.entry), []).append(values)
    return {key: {m: np.mean([s[m] for s in seeds], axis=0) for m in seeds[0]} for key, seeds in stacked.items()}


def significance_frame(results: list[RunResult], summary: pd.DataFrame, metrics: list[str],
                       test: str = "ttest", alpha: float = 0.05) -> pd.DataFrame:
    """Per dataset and metric: the reference entry against the baseline with the best mean, paired over
    users (each user's metric averaged over seeds): paired t-test and Wilcoxon signed-rank p-values, and
    the smallest difference the t-test detects on these users (``minimal_detectable_effect``)."""
    ks = sorted({int(m.split("@")[1]) for m in metrics})
    users = per_user_metrics(results, ks)
    rows = []
    for dataset, table in summary.groupby("dataset", sort=False):
        reference = table[table["role"] == "reference"]
        baselines = table[table["role"] == "baseline"]
        if reference.empty or baselines.empty:
            continue
        ref = reference.iloc[0]["entry"]
        for m in metrics:
            best = baselines.loc[baselines[f"{m}_mean"].idxmax(), "entry"]
            a, b = users[(dataset, ref)][m], users[(dataset, best)][m]
            rows.append({"dataset": dataset, "metric": m, "reference": ref, "best_baseline": best,
                         "reference_mean": float(a.mean()), "baseline_mean": float(b.mean()),
                         "improvement_pct": _pct(a.mean() - b.mean(), b.mean()), **paired_test(a, b, alpha)})
    return _with_p(pd.DataFrame(rows), test)


def ablation_frame(results: list[RunResult], summary: pd.DataFrame, metrics: list[str],
                   test: str = "ttest", alpha: float = 0.05) -> pd.DataFrame:
    """Per dataset, ablation entry and metric: the ablation against the reference, paired over users as in
    ``significance_frame``; ``change_pct`` is the ablation's mean relative to the reference's."""
    ks = sorted({int(m.split("@")[1]) for m in metrics})
    users = per_user_metrics(results, ks)
    rows = []
    for dataset, table in summary.groupby("dataset", sort=False):
        reference = table[table["role"] == "reference"]
        if reference.empty:
            continue
        ref = reference.iloc[0]["entry"]
        for entry in table.loc[table["role"] == "ablation", "entry"]:
            for m in metrics:
                a, b = users[(dataset, entry)][m], users[(dataset, ref)][m]
                rows.append({"dataset": dataset, "metric": m, "ablation": entry, "reference": ref,
                             "ablation_mean": float(a.mean()), "reference_mean": float(b.mean()),
                             "change_pct": _pct(a.mean() - b.mean(), b.mean()), **paired_test(a, b, alpha)})
    return _with_p(pd.DataFrame(rows), test)


def minimal_detectable_effect(a: np.ndarray, b: np.ndarray, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference between paired samples ``a`` and ``b`` that a two-sided paired
    test at level ``alpha`` finds with probability ``power`` (normal approximation, which the thousands
    of users of a test set justify): (z_{1-alpha/2} + z_power) * sd(a - b) / sqrt(n)."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2:
        return float("nan")
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * d.std(ddof=1) / np.sqrt(len(d)))


def paired_test(a: np.ndarray, b: np.ndarray, alpha: float = 0.05) -> dict[str, Any]:
    """Per-user values ``a`` against ``b``: the number of users, the p-values of the paired t-test and of
    the Wilcoxon signed-rank test, and the smallest difference the t-test detects, relative to b's mean."""
    from scipy import stats

    return {"n_users": len(a), "p_ttest": _p(stats.ttest_rel, a, b), "p_wilcoxon": _p(stats.wilcoxon, a, b),
            "detectable_pct": _pct(minimal_detectable_effect(a, b, alpha), b.mean())}


def _pct(diff: float, base: float) -> float:
    return 100.0 * float(diff) / float(base) if base > 0 else float("nan")


def _with_p(frame: pd.DataFrame, test: str) -> pd.DataFrame:
    if not frame.empty:
        frame["p"] = frame["p_ttest" if test == "ttest" else "p_wilcoxon"]
    return frame


def _p(test, a: np.ndarray, b: np.ndarray) -> float:
    """p-value of a paired test; NaN where it is undefined (identical values)."""
    if np.allclose(a, b):
        return float("nan")
    try:
        return float(test(a, b).pvalue)
    except ValueError:
        return float("nan")


def coldstart_frame(results: list[RunResult], splits: dict[str, Any], ks) -> pd.DataFrame:
    """Cold-start groups per (dataset, entry): each seed's group metrics, averaged over seeds."""
    frames = []
    for r in results:
        if r.dataset in splits:
            table = coldstart_table(r.ranks, splits[r.dataset], ks)
            frames.append(table.assign(dataset=r.dataset, entry=r.entry, role=r.role, seed=r.seed))
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True)
    keys = ["dataset", "entry", "role", "by", "group"]
    return frame.groupby(keys, sort=False).mean(numeric_only=True).drop(columns="seed").reset_index()


# ------------------------------------------------------------------------------------------ Markdown


def _short(metric: str) -> str:
    name, k = metric.split("@")
    return {"recall": "R", "ndcg": "N", "mrr": "MRR"}[name] + f"@{k}"


def results_markdown(summary: pd.DataFrame, significance: pd.DataFrame, metrics: list[str], alpha: float) -> str:
    """Per dataset: entries x metrics, 'mean ± std'; best of each column in bold; the reference's cell is
    marked † where it beats the best baseline with p < alpha, ‡ where it loses to it with p < alpha."""
    parts = []
    for dataset, table in summary.groupby("dataset", sort=False):
        marks: dict[str, str] = {}
        if not significance.empty:
            sig = significance[(significance["dataset"] == dataset) & (significance["p"] < alpha)]
            marks = {r["metric"]: " †" if r["reference_mean"] > r["baseline_mean"] else " ‡"
                     for _, r in sig.iterrows()}
        lines = [f"### {dataset}", "", "| model | role | seeds | " + " | ".join(_short(m) for m in metrics) + " |",
                 "|---|---|---:|" + "---:|" * len(metrics)]
        best = {m: table[f"{m}_mean"].max() for m in metrics}
        for _, row in table.iterrows():
            cells = []
            for m in metrics:
                text = f"{row[f'{m}_mean']:.4f}" + (f" ± {row[f'{m}_std']:.4f}" if row["n_seeds"] > 1 else "")
                if row["role"] == "reference":
                    text += marks.get(m, "")
                cells.append(f"**{text}**" if row[f"{m}_mean"] == best[m] else text)
            label = row["entry"] + (f" ({row['point']})" if row["point"] else "")
            lines.append(f"| {label} | {row['role']} | {row['n_seeds']} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def significance_markdown(significance: pd.DataFrame) -> str:
    if significance.empty:
        return "(no reference entry with baselines to compare)"
    lines = ["| dataset | metric | reference | best baseline | ref. mean | baseline mean | gain % | users "
             "| p (t-test) | p (Wilcoxon) | detectable % |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in significance.iterrows():
        lines.append(f"| {r['dataset']} | {_short(r['metric'])} | {r['reference']} | {r['best_baseline']} | "
                     f"{r['reference_mean']:.4f} | {r['baseline_mean']:.4f} | {r['improvement_pct']:+.1f} | "
                     f"{r['n_users']} | {r['p_ttest']:.2g} | {r['p_wilcoxon']:.2g} | {r['detectable_pct']:.1f} |")
    return "\n".join(lines)


def ablation_markdown(ablations: pd.DataFrame, metrics: list[str]) -> str:
    """Per dataset: ablations x metrics, 'change % vs the reference (p) [detectable %]'."""
    parts = []
    for dataset, table in ablations.groupby("dataset", sort=False):
        lines = [f"### {dataset} (against {table['reference'].iloc[0]})", "",
                 "| ablation | " + " | ".join(_short(m) for m in metrics) + " |", "|---|" + "---:|" * len(metrics)]
        for entry, rows in table.groupby("ablation", sort=False):
            r = rows.set_index("metric")
            cells = [f"{r.at[m, 'change_pct']:+.1f} ({r.at[m, 'p']:.2g}) [{r.at[m, 'detectable_pct']:.1f}]"
                     for m in metrics]
            lines.append(f"| {entry} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def coldstart_markdown(cold: pd.DataFrame, metric: str) -> str:
    """Per dataset and grouping: entries x groups of ``metric`` (users per group in the header)."""
    parts = []
    for (dataset, by), table in cold.groupby(["dataset", "by"], sort=False):
        groups = list(dict.fromkeys(table["group"]))
        sizes = table.drop_duplicates("group").set_index("group")["n_users"]
        title = "test item's training interactions" if by == "item_count" else "history length"
        lines = [f"### {dataset}: {_short(metric)} by {title}", "",
                 "| model | " + " | ".join(f"{g} ({int(sizes[g])} users)" for g in groups) + " |",
                 "|---|" + "---:|" * len(groups)]
        for entry, rows in table.groupby("entry", sort=False):
            values = rows.set_index("group")[metric]
            cells = ("-" if np.isnan(values[g]) else f"{values[g]:.4f}" for g in groups)
            lines.append(f"| {entry} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------------------ files


def write_experiment_report(results: list[RunResult], out: Path, metrics: list[str], select_metric: str,
                            test: str = "ttest", alpha: float = 0.05, title: str = "experiment",
                            splits: dict[str, Any] | None = None, plots: bool = True) -> dict[str, Path]:
    """Write results.md / .csv, significance.csv, coldstart.csv and the plots; returns their paths."""
    from mp4sr.report import plots as plotting

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = select_points(results, select_metric)
    summary = summary_frame(chosen, metrics)
    significance = significance_frame(chosen, summary, metrics, test, alpha) if not summary.empty else pd.DataFrame()
    ablations = ablation_frame(chosen, summary, metrics, test, alpha) if not summary.empty else pd.DataFrame()
    ks = sorted({int(m.split("@")[1]) for m in metrics})
    cold = coldstart_frame(chosen, splits or {}, ks)
    files = {"results_csv": out / "results.csv", "significance_csv": out / "significance.csv",
             "ablations_csv": out / "ablations.csv", "coldstart_csv": out / "coldstart.csv",
             "results_md": out / "results.md"}
    summary.to_csv(files["results_csv"], index=False)
    significance.to_csv(files["significance_csv"], index=False)
    ablations.to_csv(files["ablations_csv"], index=False)
    cold.to_csv(files["coldstart_csv"], index=False)
    if plots and not summary.empty:
        files.update(plotting.experiment_plots(summary, chosen, cold, metrics, select_metric, out / "plots"))
    files["results_md"].write_text(_report_text(title, summary, significance, ablations, cold, metrics,
                                                select_metric, test, alpha, files, out, len(results)))
    return files


def _report_text(title, summary, significance, ablations, cold, metrics, select_metric, test, alpha, files, out,
                 n_runs) -> str:
    test_name = "paired t-test" if test == "ttest" else "Wilcoxon signed-rank test"
    text = [
        f"# {title}", "",
        f"{n_runs} finished runs. Test metrics of the best validation epoch, full ranking over all items, "
        f"mean ± std over seeds. Grids chosen on validation {select_metric} (mean over seeds). "
        f"Bold: best of the column. †/‡: the reference is better/worse than the best baseline of that "
        f"column with p < {alpha} ({test_name} over users, each user's metric averaged over seeds).", "",
        results_markdown(summary, significance, metrics, alpha) if not summary.empty else "(no finished runs)", "",
        "## Reference vs best baseline", "", significance_markdown(significance), "",
        "Detectable %: the smallest difference (in % of the compared-against mean) that a paired t-test over "
        f"these users finds with probability 0.8 at level {alpha}; smaller true differences mostly go unseen.", "",
    ]
    if not ablations.empty:
        text += ["## Ablations against the reference", "",
                 f"Each cell: the ablation's mean relative to the reference's in %, the p-value of the "
                 f"{test_name} over users in parentheses, the detectable difference in % in brackets.", "", ablation_markdown(ablations, metrics), ""]
    if not cold.empty:
        text += ["## Cold start", "", coldstart_markdown(cold, "ndcg@10" if "ndcg@10" in cold else metrics[0]), ""]
    plots = [p for name, p in files.items() if name.startswith("plot_")]
    if plots:
        text += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(out)})" for p in plots] + [""]
    return "\n".join(text)
