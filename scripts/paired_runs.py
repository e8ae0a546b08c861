"""Paired tests over users between two sets of finished runs (each run's test ranks), for comparisons
that no experiment report makes (runs of different experiments, or one seed of each).

    python scripts/paired_runs.py RUN_A RUN_B [PROTOCOL] [--k 10 20]
    python scripts/paired_runs.py A_2024,A_2025 B_2024,B_2025 history_excluded

RUN_A / RUN_B: run folders (``runs/experiments/<name>/runs/<key>`` or an archive's record), several
joined by commas to average each user's metric over seeds first, as the experiment reports do.
PROTOCOL: ``history_kept`` or ``history_excluded`` for runs that ranked both ways (their
``test_ranks_<protocol>.npy``); without it, ``test_ranks.npy``. Prints, for Recall@K and NDCG@K, both
means, the relative difference, and the p-values of the paired t-test and of the Wilcoxon test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mp4sr.evaluate.metrics import metrics_from_ranks


def per_user(folders: list[Path], protocol: str | None, ks: list[int]) -> dict[str, np.ndarray]:
    """Each user's metrics, averaged over the runs (which must rank the same test users)."""
    name = f"test_ranks_{protocol}.npy" if protocol else "test_ranks.npy"
    runs = []
    for folder in folders:
        path = folder / name
        if not path.is_file():
            raise SystemExit(f"{path}: no such file (is the run finished, and did it rank with that protocol?)")
        runs.append(metrics_from_ranks(torch.from_numpy(np.load(path).astype(np.int64)), ks))
    sizes = {len(next(iter(r.values()))) for r in runs}
    if len(sizes) != 1:
        raise SystemExit(f"the runs rank different numbers of test users ({sorted(sizes)}): not one test set")
    return {metric: np.mean([r[metric].numpy() for r in runs], axis=0) for metric in runs[0]}


def compare(a: list[Path], b: list[Path], protocol: str | None, ks: list[int]) -> list[str]:
    from scipy import stats

    ours, theirs = per_user(a, protocol, ks), per_user(b, protocol, ks)
    if len(next(iter(ours.values()))) != len(next(iter(theirs.values()))):
        raise SystemExit("A and B rank different numbers of test users: not one test set")
    lines = [f"{len(next(iter(ours.values())))} users, {protocol or 'test'}: A {len(a)} run(s), B {len(b)} run(s)"]
    for k in ks:
        for metric in (f"recall@{k}", f"ndcg@{k}"):
            x, y = ours[metric], theirs[metric]
            same = np.allclose(x, y)
            t = float("nan") if same else stats.ttest_rel(x, y).pvalue
            w = float("nan") if same else stats.wilcoxon(x, y).pvalue
            change = 100 * (x.mean() / y.mean() - 1) if y.mean() > 0 else float("nan")
            lines.append(f"{metric:>10}: A {x.mean():.4f}  B {y.mean():.4f}  {change:+.1f}%  "
                         f"t-test p = {t:.2g}  Wilcoxon p = {w:.2g}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="run folder(s) A, comma-separated")
    parser.add_argument("b", help="run folder(s) B, comma-separated")
    parser.add_argument("protocol", nargs="?", choices=["history_kept", "history_excluded"])
    parser.add_argument("--k", type=int, nargs="+", default=[10])
    args = parser.parse_args()
    folders = [[Path(f) for f in side.split(",") if f] for side in (args.a, args.b)]
    print("\n".join(compare(*folders, args.protocol, args.k)))


if __name__ == "__main__":
    main()
