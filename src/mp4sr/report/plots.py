"""PNG plots of an experiment (matplotlib, Agg backend: no display needed).

- ``metrics_<dataset>.png``: test metrics per entry, bars = mean over seeds, error bars = std;
- ``curves_<dataset>.png``: validation metric per epoch, one line per (entry, seed), ablations dashed;
- ``curves.png`` of an ``mp4sr run``: training loss and validation metric per epoch of both stages;
- ``coldstart_<dataset>.png``: NDCG@10 per cold-start group (test item's training interactions,
  history length), one bar per entry.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _colours(n: int) -> list:
    """n distinct colours (matplotlib's cycle repeats after 10; tab20 holds 20)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _grouped_bars(ax, groups: list[str], series: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> None:
    """Bars of each series side by side within each group; series: label -> (heights, errors)."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, ((label, (heights, errors)), colour) in enumerate(zip(series.items(), _colours(len(series)))):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, yerr=errors, capsize=1,
               label=label, color=colour, error_kw={"linewidth": 0.8})
    ax.set_xticks(x, groups)


def _legend_outside(ax) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def metric_bars(summary: pd.DataFrame, metrics: list[str], path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(24, 4 + 0.1 * len(metrics) * len(summary)), 4.5))
    series = {row["entry"]: (np.array([row[f"{m}_mean"] for m in metrics]),
                             np.array([row[f"{m}_std"] for m in metrics]))
              for _, row in summary.iterrows()}
    _grouped_bars(ax, metrics, series)
    ax.set_ylabel("test value (mean ± std over seeds)")
    ax.set_title(title)
    _legend_outside(ax)
    return _save(fig, path)


LINE_STYLE = {"baseline": ("-", 1.0), "reference": ("-", 2.2), "ablation": ("--", 1.0)}


def training_curves(histories: dict[tuple[str, int], list[dict[str, Any]]], roles: dict[str, str], metric: str,
                    path: Path, title: str, loss: bool = False) -> Path:
    """Validation ``metric`` per epoch; one colour per entry (its seeds share it), ablations dashed. Runs
    that recorded the test set after every epoch (``eval.test_every_epoch``) get a second panel of it;
    ``loss`` adds a first panel of the training loss. ``histories``: rows of ``epochs.jsonl``."""
    plt = _pyplot()
    panels = (["loss"] if loss else []) + [f"valid_{metric}"]
    if any(f"test_{metric}" in h for history in histories.values() for h in history):
        panels.append(f"test_{metric}")
    fig, axes = plt.subplots(1, len(panels), figsize=(9 + 5 * (len(panels) - 1), 4.5), squeeze=False)
    entries = list(dict.fromkeys(entry for entry, _ in histories))
    colours = dict(zip(entries, _colours(len(entries))))
    for ax, key in zip(axes[0], panels):
        labelled = set()
        for (entry, seed), history in histories.items():
            points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
            if not points:
                continue
            style, width = LINE_STYLE.get(roles.get(entry, "baseline"), ("-", 1.0))
            ax.plot(*zip(*points), style, color=colours[entry], linewidth=width,
                    label=None if entry in labelled else entry)
            labelled.add(entry)
        ax.set_xlabel("epoch")
        split = key.split("_")[0]
        ax.set_ylabel({"loss": "training loss", "valid": f"validation {metric}", "test": f"test {metric}"}[split])
        if split == "test":  # the metric panels share their scale
            ax.sharey(axes[0][panels.index(f"valid_{metric}")])
    axes[0][0].set_title(title)
    if entries:
        _legend_outside(axes[0][-1])
    return _save(fig, path)


def coldstart_bars(cold: pd.DataFrame, metric: str, path: Path, title: str) -> Path:
    plt = _pyplot()
    groupings = list(dict.fromkeys(cold["by"]))
    fig, axes = plt.subplots(1, len(groupings), figsize=(7 * len(groupings) + 2, 4.5), squeeze=False)
    for ax, by in zip(axes[0], groupings):
        table = cold[cold["by"] == by]
        groups = list(dict.fromkeys(table["group"]))
        sizes = table.drop_duplicates("group").set_index("group")["n_users"]
        series = {entry: (rows.set_index("group")[metric].reindex(groups).to_numpy(), None)
                  for entry, rows in table.groupby("entry", sort=False)}
        _grouped_bars(ax, [f"{g}\n({int(sizes[g])})" for g in groups], series)
        ax.set_xlabel("training interactions of the test item" if by == "item_count" else "history length")
        ax.set_ylabel(f"test {metric}")
    _legend_outside(axes[0][-1])
    fig.suptitle(title)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def experiment_plots(summary: pd.DataFrame, results: list, cold: pd.DataFrame, metrics: list[str],
                     curve_metric: str, folder: Path) -> dict[str, Path]:
    """Every plot of every dataset; returns {'plot_<kind>_<dataset>': path}."""
    files = {}
    for dataset, table in summary.groupby("dataset", sort=False):
        slug = _slug(dataset)
        files[f"plot_metrics_{slug}"] = metric_bars(table, metrics, folder / f"metrics_{slug}.png", dataset)
        histories = {(r.entry, r.seed): r.history for r in results if r.dataset == dataset and r.history}
        roles = {r.entry: r.role for r in results}
        if histories:
            files[f"plot_curves_{slug}"] = training_curves(histories, roles, curve_metric,
                                                           folder / f"curves_{slug}.png", dataset)
        table_cold = cold[cold["dataset"] == dataset] if not cold.empty else cold
        metric = "ndcg@10" if "ndcg@10" in cold else metrics[0]
        if not table_cold.empty:
            files[f"plot_coldstart_{slug}"] = coldstart_bars(table_cold, metric, folder / f"coldstart_{slug}.png",
                                                             dataset)
    return files
