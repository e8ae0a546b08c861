"""SYNTHETIC interaction data for scale benchmarks (not real behaviour: never report quality on it).

Items belong to taste clusters and have power-law popularity (Zipf, exponent ``zipf``) inside and
across clusters; each user has latent tastes (a main cluster and a second one) and draws each next
item from one of them by popularity; history lengths are geometric with a minimum of 5. Item
vectors are their cluster's centroid plus noise, so content is correlated with the tastes.
Everything is vectorised: 20M interactions take seconds.

    python benchmarks/synthetic.py --users 1000000 --items 1000000 --interactions 20000000 --out /tmp/syn
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mp4sr.data.dataset import Dataset, ItemCatalogue, Sequences


def synthetic_sequences(n_users: int, n_items: int, n_interactions: int, clusters: int = 512,
                        zipf: float = 1.05, min_length: int = 5, seed: int = 0) -> tuple[Sequences, np.ndarray]:
    """(sequences, item cluster of each item)."""
    rng = np.random.default_rng(seed)
    mean_extra = max(n_interactions / n_users - min_length, 0.0)
    lengths = min_length + (rng.geometric(1 / (mean_extra + 1), n_users) - 1 if mean_extra else 0)
    # scale to the requested total exactly (largest users absorb the rounding)
    lengths = np.maximum(min_length, np.round(lengths * n_interactions / lengths.sum())).astype(np.int64)
    lengths[np.argsort(-lengths)[: abs(int(lengths.sum() - n_interactions))]] -= np.sign(lengths.sum() - n_interactions)
    item_cluster = rng.integers(0, clusters, n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf
    popularity = popularity[rng.permutation(n_items)]
    # items sorted by cluster; the cumulative popularity inside each cluster's segment
    by_cluster = np.argsort(item_cluster, kind="stable")
    cum = np.cumsum(popularity[by_cluster])
    seg_end = np.searchsorted(item_cluster[by_cluster], np.arange(clusters), side="right")
    seg_hi = cum[np.maximum(seg_end - 1, 0)]
    seg_lo = np.concatenate([[0.0], seg_hi[:-1]])
    cluster_mass = seg_hi - seg_lo
    # users' tastes: two clusters drawn by cluster popularity, the first taken 80% of the time
    tastes = rng.choice(clusters, size=(n_users, 2), p=cluster_mass / cluster_mass.sum())
    user_of = np.repeat(np.arange(n_users), lengths)
    chosen = tastes[user_of, (rng.random(len(user_of)) >= 0.8).astype(np.int64)]
    del user_of
    point = seg_lo[chosen] + rng.random(len(chosen)) * cluster_mass[chosen]
    del chosen
    items = by_cluster[np.minimum(np.searchsorted(cum, point, side="right"), n_items - 1)]
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Sequences(offsets, items.astype(np.int64)), item_cluster


def synthetic_vectors(item_cluster: np.ndarray, dim: int = 32, noise: float = 0.5, seed: int = 0) -> np.ndarray:
    """[n_items, 1, dim] float16 vectors: the cluster's centroid plus Gaussian noise."""
    rng = np.random.default_rng(seed + 1)
    centroids = rng.standard_normal((int(item_cluster.max()) + 1, dim)).astype(np.float32)
    vectors = centroids[item_cluster] + noise * rng.standard_normal((len(item_cluster), dim), dtype=np.float32)
    return vectors.astype(np.float16)[:, None, :]


def synthetic_dataset(n_users: int, n_items: int, n_interactions: int, seed: int = 0, **kw) -> tuple[Dataset, np.ndarray]:
    sequences, item_cluster = synthetic_sequences(n_users, n_items, n_interactions, seed=seed, **kw)
    catalogue = ItemCatalogue(np.arange(n_items).astype(str).astype(object))
    users = np.arange(n_users).astype(str).astype(object)
    return Dataset(f"synthetic-{n_users}u-{n_items}i-{n_interactions}x", catalogue, users, sequences), item_cluster


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--interactions", type=int, default=2_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="folder for a RecBole-style .inter file (synthetic)")
    args = p.parse_args()
    sequences, _ = synthetic_sequences(args.users, args.items, args.interactions, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "synthetic.inter"
    users = np.repeat(np.arange(len(sequences)), sequences.lengths)
    stamps = np.arange(len(users))
    with open(path, "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        np.savetxt(f, np.stack([users, sequences.items, stamps], 1), fmt="%d", delimiter="\t")
    print(f"SYNTHETIC data: {len(sequences):,} users, {args.items:,} items, {len(users):,} interactions -> {path}")


if __name__ == "__main__":
    main()
