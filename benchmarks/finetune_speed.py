"""Seconds per MP4SR fine-tuning epoch by training form and batch size, measured in one run.

A recipe is ``MODE:BATCH``: ``sequence`` trains one user per row (every position a target), ``prefix``
one prefix per row (RecBole's form; docs/results.md, "Whole-sequence or prefix training"). Each round
trains one epoch of every recipe in turn, so all see the same machine load; the table gives the median
over rounds, the optimiser steps of an epoch and the ratio to the first recipe.

    python benchmarks/finetune_speed.py --dataset amazon-scientific-mm --rounds 3
    python benchmarks/finetune_speed.py --dataset amazon-scientific --recipes sequence:1024,prefix:2048,prefix:256
"""

from __future__ import annotations

import argparse
import math

import torch
from epoch_rounds import median_epoch_seconds, training_context

from mp4sr.config import EvalSettings, TrainSettings
from mp4sr.models import build_model
from mp4sr.train import Trainer


def parse_recipes(text: str) -> list[tuple[str, int]]:
    """'sequence:1024,prefix:2048' -> [('sequence', 1024), ('prefix', 2048)]."""
    recipes = []
    for item in text.split(","):
        mode, _, batch = item.strip().partition(":")
        if mode not in {"sequence", "prefix"} or not batch.isdigit():
            raise SystemExit(f"--recipes: {item!r} is not MODE:BATCH with MODE sequence or prefix")
        recipes.append((mode, int(batch)))
    return recipes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="amazon-scientific-mm")
    p.add_argument("--recipes", default="sequence:1024,prefix:2048",
                   help="MODE:BATCH,... (default: the former fine-tuning default against the present one)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    recipes = parse_recipes(args.recipes)
    split, context = training_context(args.dataset, args.threads)
    trainers, steps = {}, {}
    for mode, batch in recipes:
        examples = split.train_examples(mode, 50)
        torch.manual_seed(0)
        model = build_model("mp4sr", {"stage": "finetune"}, context)
        settings = TrainSettings(epochs=1, batch_size=batch, progress=False, threads=args.threads)
        trainers[mode, batch] = (Trainer(model, split, examples, settings, EvalSettings(), 50),
                                 torch.optim.Adam(model.parameters(), lr=1e-3))
        steps[mode, batch] = math.ceil(len(examples) / batch)
    seconds = median_epoch_seconds(trainers, args.rounds)
    print(f"\n{args.dataset}: MP4SR fine-tuning, seconds per epoch, median of {args.rounds} rounds, "
          f"{args.threads} thread(s)")
    print(f"{'recipe':15s} {'steps':>6s} {'seconds':>8s} {'ratio':>6s}")
    first = seconds[recipes[0]]
    for mode, batch in recipes:
        s = seconds[mode, batch]
        print(f"{mode + ':' + str(batch):15s} {steps[mode, batch]:6d} {s:8.2f} {s / first:6.2f}")


if __name__ == "__main__":
    main()
