"""Text feature extraction (mp4sr.features.extract_text) vs one plain SentenceTransformer.encode call.

Both encode the same item sentences of a dataset (default amazon-scientific, UniSRec text split into
title / categories / brand) with the same loaded all-MiniLM-L6-v2 and batch size; then again with every
item repeated --repeat times, as happens when catalogues list the same product under several ids.
Ours dedupes identical sentences and writes the store to disk (included in its time).

    python benchmarks/text_encoding.py [--dataset amazon-scientific] [--items N] [--repeat 3] [--batch-size 64]

Prints seconds and speed-up ratios (plain time / our time; >= 1.0 means ours is not slower).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from mp4sr.data import ItemCatalogue  # noqa: E402
from mp4sr.features import RunOptions, extract_text, item_sentences, load_items, load_text_encoder  # noqa: E402
from mp4sr.paths import CACHE_ENV  # noqa: E402


def repeated(cat: ItemCatalogue, times: int) -> ItemCatalogue:
    ids = np.array([f"{i}#{r}" for r in range(times) for i in cat.ids], dtype=object)
    return ItemCatalogue(ids, text=list(cat.text or []) * times)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def compare(label: str, cat: ItemCatalogue, split: str, encoder, batch_size: int) -> None:
    sentences = [s for item in item_sentences(cat, split) for s in item]
    plain_s, plain = timed(lambda: encoder.model.encode(sentences, batch_size=batch_size, convert_to_numpy=True))
    ours_s, store = timed(lambda: extract_text(cat, f"bench-{label}", encoder, split=split, batch_size=batch_size,
                                               options=RunOptions(progress=False)))
    ours = np.asarray(store.vectors, dtype=np.float32)[store.mask]  # the same sentences, item by item
    diff = float(np.abs(ours - plain).max())
    print(f"{label:>10}: {len(cat):6,} items, {len(sentences):7,} sentences ({store.manifest['n_inputs']:,} distinct) | "
          f"plain encode {plain_s:7.1f} s | ours {ours_s:7.1f} s | speed-up x{plain_s / ours_s:.2f} | "
          f"max |diff| {diff:.1e} (float16 store)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon-scientific")
    parser.add_argument("--items", type=int, default=None, help="first N items only (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="copies of each item in the duplicate case (1: skip it)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    src = load_items(args.dataset)
    cat = src.catalogue
    if args.items:
        cat = ItemCatalogue(cat.ids[: args.items], text=(cat.text or [])[: args.items])
    encoder = load_text_encoder()
    encoder.model.encode(["warm up"] * 8)  # model loading and first-call costs stay out of both timings
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: ours really computes
        os.environ[CACHE_ENV] = cache
        print(f"{args.dataset}, all-MiniLM-L6-v2, batch {args.batch_size}, torch threads "
              f"{__import__('torch').get_num_threads()}")
        compare("as is", cat, src.text_split, encoder, args.batch_size)
        if args.repeat > 1:
            compare(f"{args.repeat}x items", repeated(cat, args.repeat), src.text_split, encoder, args.batch_size)


if __name__ == "__main__":
    main()
