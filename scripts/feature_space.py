"""Do two datasets' item vectors share one space? A check before pre-training on one and fine-tuning on the other.

    python scripts/feature_space.py amazon-scientific-mm amazon-toys-mm

For each modality both datasets have, it prints the mean vector norm of each, the cosine between the two
datasets' mean vectors, and, within each dataset, the cosine between its text and image mean vectors.
Vectors from one encoder sit in one region of its space (a high cosine across datasets, similar norms);
vectors of another encoder, or of the other modality, do not (the within-dataset text/image cosine is the
scale of "unrelated"). The stores are computed or imported on first use, as ``mp4sr features`` does.
"""

from __future__ import annotations

import sys

import numpy as np

from mp4sr.features import FeatureStore, feature_stores


def _present(store: FeatureStore) -> np.ndarray:
    """[n, d] float32: every present vector of the store (all of an item's, not their mean)."""
    vectors = np.asarray(store.vectors, dtype=np.float32)
    return vectors[np.asarray(store.mask, dtype=bool)]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def compare(first: str, second: str) -> list[str]:
    stores = {name: feature_stores(name) for name in (first, second)}
    means: dict[tuple[str, str], np.ndarray] = {}
    lines = [f"{'modality':<8} {'dataset':<28} {'vectors':>8} {'dim':>5} {'mean norm':>10}"]
    for modality in ("text", "image"):
        for name in (first, second):
            store = stores[name][modality]
            if store is None:
                lines.append(f"{modality:<8} {name:<28} {'none':>8}")
                continue
            present = _present(store)
            means[modality, name] = present.mean(axis=0)
            norm = float(np.linalg.norm(present, axis=1).mean())
            lines.append(f"{modality:<8} {name:<28} {len(present):>8} {store.dim:>5} {norm:>10.2f}")
    lines.append("")
    for modality in ("text", "image"):
        pair = (means.get((modality, first)), means.get((modality, second)))
        if pair[0] is not None and pair[1] is not None and len(pair[0]) == len(pair[1]):
            lines.append(f"cosine of the mean {modality} vectors, {first} / {second}: {_cosine(*pair):.2f}")
        elif pair[0] is not None and pair[1] is not None:
            lines.append(f"{modality}: different dimensions ({len(pair[0])} / {len(pair[1])}): not one space")
    for name in (first, second):
        text, image = means.get(("text", name)), means.get(("image", name))
        if text is not None and image is not None and len(text) == len(image):
            lines.append(f"cosine of the mean text and image vectors within {name}: {_cosine(text, image):.2f}")
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print("\n".join(compare(sys.argv[1], sys.argv[2])))
