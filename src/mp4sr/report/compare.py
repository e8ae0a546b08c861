"""Paired comparison of two sets of finished runs over the same test users (``mp4sr compare``).

A run is any folder that ranked a test set: ``mp4sr train`` / ``pretrain`` / ``finetune`` outputs,
``mp4sr run`` folders (their fine-tuning), an experiment's ``runs/<key>`` or its archived record. Each
user's metric is averaged over the runs of a side first (seeds), then the two sides are compared with
the paired tests of the experiment reports. ``by`` splits the users into the cold-start groups of the
reports (the test item's training interactions, the history length) or, on a cold-item split, into the
users whose test item is a held-out one and the others, and tests each group apart.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from mp4sr.errors import ConfigError
from mp4sr.evaluate.metrics import metrics_from_ranks
from mp4sr.report.experiment import paired_test

log = logging.getLogger("mp4sr.report")

PROTOCOLS = ("history_kept", "history_excluded")  # eval.exclude_history false / true
GROUPINGS = ("item_count", "history", "held_out")  # compare_runs(by=...)


def run_folder(path: str | Path) -> Path:
    """The folder of a run: ``path`` itself, or the fine-tuning of an ``mp4sr run`` folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such run folder")
    if not _has_ranking(folder) and _has_ranking(folder / "finetune"):
        return folder / "finetune"
    return folder


def _has_ranking(folder: Path) -> bool:
    return (folder / "best.pt").is_file() or any(folder.glob("test_ranks*.npy"))


def _own_protocol(folder: Path) -> str | None:
    """The protocol a run ranked its test set with (its config's ``eval.exclude_history``)."""
    config = folder / "config.yaml"
    if not config.is_file():
        return None
    settings = yaml.safe_load(config.read_text()) or {}
    return PROTOCOLS[bool((settings.get("eval") or {}).get("exclude_history", False))]


def run_ranks(path: str | Path, protocol: str | None = None, batch_size: int = 512) -> np.ndarray:
    """The 0-based rank of every test user's item in the run at ``path``, in the order of the
    leave-one-out split, with the user's history kept in or excluded from the ranking (``protocol``;
    None: as the run ranked its test set). Read from the run's ``test_ranks*.npy``; a run with a
    ``best.pt`` and no ranks for that protocol is ranked again from its checkpoint (with the dataset and
    feature stores it was trained on), and the ranks are saved in its folder."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise ConfigError(f"protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    folder = run_folder(path)
    own = _own_protocol(folder)
    wanted = protocol or own
    candidates = [folder / f"test_ranks_{wanted}.npy"] if wanted else []
    if protocol is None or protocol == own:
        candidates.append(folder / "test_ranks.npy")
    for file in candidates:
        if file.is_file():
            return np.load(file).astype(np.int64)
    if not (folder / "best.pt").is_file():
        raise ConfigError(f"{folder}: no test ranks{f' for {wanted}' if wanted else ''} and no best.pt to rank from")
    return _rank_again(folder, wanted or PROTOCOLS[0], batch_size)


def _rank_again(folder: Path, protocol: str, batch_size: int) -> np.ndarray:
    from mp4sr.data import leave_one_out
    from mp4sr.evaluate.ranking import full_ranking
    from mp4sr.serve.recommender import Recommender

    log.info("ranking the test set of %s from its best.pt (%s)", folder, protocol.replace("_", " "))
    recommender = Recommender.load(folder / "best.pt")
    split = leave_one_out(recommender.dataset)
    values = torch.from_numpy(split.dataset.sequences.items)
    with torch.no_grad():
        result = full_ranking(recommender.model.eval(), values, split.test, recommender.config.data.max_len,
                              (10,), batch_size, protocol == PROTOCOLS[1])
    ranks = np.asarray(result.ranks, dtype=np.int64)
    np.save(folder / f"test_ranks_{protocol}.npy", ranks)
    return ranks


def _dataset(folder: Path) -> str | None:
    for name in ("config.yaml", "run.json"):
        file = folder / name
        if file.is_file():
            text = file.read_text()
            data = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
            if isinstance(data, dict) and data.get("dataset"):
                return str(data["dataset"])
    return None


def per_user(paths: list[str | Path], protocol: str | None, ks) -> dict[str, np.ndarray]:
    """Each test user's metrics (``recall@k``, ``ndcg@k``, ``mrr@k``), averaged over the runs."""
    if not paths:
        raise ConfigError("no run folder given")
    runs = [metrics_from_ranks(torch.from_numpy(run_ranks(p, protocol)), ks) for p in paths]
    sizes = sorted({len(next(iter(r.values()))) for r in runs})
    if len(sizes) != 1:
        raise ConfigError(f"the runs {', '.join(map(str, paths))} rank different numbers of test users "
                          f"({', '.join(map(str, sizes))}): not one test set")
    return {metric: np.mean([r[metric].numpy() for r in runs], axis=0) for metric in runs[0]}


def compare_runs(a: list[str | Path], b: list[str | Path], protocol: str | None = None, ks=(10, 20),
                 alpha: float = 0.05, by: str | None = None, cold_items: float | None = None,
                 cold_seed: int = 0) -> pd.DataFrame:
    """Side A against side B, one row per metric (Recall@K and NDCG@K for each K): both means, A's
    relative change, the paired t-test's and the Wilcoxon test's p-values over users and the smallest
    relative difference these users let the t-test detect (``detectable_pct``).

    ``by`` (one of ``GROUPINGS``) adds the same rows for each group of users, after the rows of all
    users (column ``group``: ``all``, then the group labels); the split is rebuilt from the runs' dataset,
    and a cold-item split from ``cold_items`` / ``cold_seed`` (default: read from the run's record)."""
    datasets = {d for d in (_dataset(run_folder(p)) for p in [*a, *b]) if d}
    if len(datasets) > 1:
        raise ConfigError(f"the runs were trained on different datasets ({', '.join(sorted(datasets))}): "
                          "a paired test needs one test set")
    if by is not None and by not in GROUPINGS:
        raise ConfigError(f"by {by!r}: use one of {', '.join(GROUPINGS)}")
    ours, theirs = per_user(a, protocol, ks), per_user(b, protocol, ks)
    n_a, n_b = len(next(iter(ours.values()))), len(next(iter(theirs.values())))
    if n_a != n_b:
        raise ConfigError(f"A ranks {n_a} test users and B {n_b}: not one test set")
    groups = [("all", np.ones(n_a, dtype=bool))]
    if by is not None:
        groups += user_groups(run_folder(a[0]), by, n_a, cold_items, cold_seed)
    rows = []
    for group, members in groups:
        for k in ks:
            for metric in (f"recall@{k}", f"ndcg@{k}"):
                x, y = ours[metric][members], theirs[metric][members]
                if not len(x):
                    continue
                change = 100.0 * (x.mean() / y.mean() - 1) if y.mean() > 0 else float("nan")
                rows.append({"group": group, "metric": metric, "a": float(x.mean()), "b": float(y.mean()),
                             "change_pct": change, **paired_test(x, y, alpha)})
    return pd.DataFrame(rows)


def user_groups(folder: Path, by: str, n_users: int, cold_items: float | None = None,
                cold_seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """(label, mask over the test users) of each group of ``by`` on the test split of the run in
    ``folder``. A cold-item split is rebuilt with ``cold_items`` of the items held out (seed
    ``cold_seed``), or, when ``cold_items`` is None, as the run's record names it (``<dataset>-coldNN``)."""
    from mp4sr.config import DataSettings
    from mp4sr.data import leave_one_out, load_dataset
    from mp4sr.evaluate.coldstart import HISTORY_GROUPS, ITEM_GROUPS, assign_groups, cold_item_split, user_attributes

    config = folder / "config.yaml"
    settings = (yaml.safe_load(config.read_text()) or {}) if config.is_file() else {}
    name = settings.get("dataset")
    if not name:
        raise ConfigError(f"{folder}: no config.yaml naming its dataset, so its test users cannot be grouped")
    data = DataSettings.model_validate(settings.get("data") or {})
    if data.join_datasets:
        raise ConfigError(f"{folder} was trained on joined datasets: compare the fine-tunings on one dataset by group")
    fraction = cold_items if cold_items is not None else _cold_fraction(folder)
    dataset = load_dataset(name, data.user_core, data.item_core, data.columns)
    held_out = None
    if fraction is not None:  # as the experiment runner's DatasetCache builds it
        cold = cold_item_split(dataset, fraction, cold_seed)
        dataset, held_out = cold.dataset, cold.cold_items
    split = leave_one_out(dataset)
    where = f"{name}{f' with {fraction:.0%} of its items held out (seed {cold_seed})' if fraction else ''}"
    if len(split.test) != n_users:
        raise ConfigError(f"the runs rank {n_users:,} test users and {where} has {len(split.test):,}: "
                          "give the cold-item split the runs were trained on (--cold-items, --cold-seed)")
    if by == "held_out":
        if held_out is None:
            raise ConfigError(f"{where} holds no item out: 'held_out' groups the users of a cold-item split "
                              "(--cold-items FRACTION)")
        is_held = np.isin(split.test.targets, held_out)
        return [("held-out items", is_held), ("other items", ~is_held)]
    bounds = ITEM_GROUPS if by == "item_count" else HISTORY_GROUPS
    labels = assign_groups(user_attributes(split)[by], bounds)
    return [(label, labels == label) for label, _, _ in bounds]


def _cold_fraction(folder: Path) -> float | None:
    """The held-out fraction an experiment's record names in its dataset (``amazon-toys-mm-cold20``)."""
    record = folder / "run.json"
    if not record.is_file():
        return None
    found = re.search(r"-cold(\d+)(?:-history-excluded)?$", str(json.loads(record.read_text()).get("dataset", "")))
    return int(found.group(1)) / 100 if found else None
