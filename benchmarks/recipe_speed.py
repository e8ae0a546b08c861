"""Seconds per MP4SR epoch under two recipes, measured in one run: the defaults against the wide model
of the strong published models on this data (hidden 256, FFN 512, dropout 0.5; docs/results.md,
"MP4SR's width").

Each round trains one epoch of each recipe and stage in turn (pre-training, then fine-tuning, at the
stages' default batch sizes and training forms), so both recipes see the same machine load; the table
gives the median over rounds and the ratio wide / default.

    python benchmarks/recipe_speed.py --dataset amazon-scientific-mm --rounds 3
    python benchmarks/recipe_speed.py --wide 'hidden=256,ffn=512,dropout=0.5,id_embedding=false'
"""

from __future__ import annotations

import argparse

import torch
import yaml
from epoch_rounds import median_epoch_seconds, training_context

from mp4sr.config import EvalSettings, TrainSettings
from mp4sr.models import build_model
from mp4sr.stages import stage_config
from mp4sr.train import Trainer

STAGES = ("pretrain", "finetune")


def parse_params(text: str) -> dict:
    """'hidden=256,dropout=0.5' -> {'hidden': 256, 'dropout': 0.5} (values read as YAML)."""
    pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
    return {key.strip(): yaml.safe_load(value) for key, value in pairs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="amazon-scientific-mm")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--wide", default="hidden=256,ffn=512,dropout=0.5", help="the second recipe's model settings")
    args = p.parse_args()
    split, context = training_context(args.dataset, args.threads)
    recipes = {"default": {}, "wide": parse_params(args.wide)}
    trainers = {}
    for name, params in recipes.items():
        for stage in STAGES:
            defaults = stage_config(stage, None, ["model=mp4sr"])  # the stage's batch size and training form
            examples = split.train_examples(defaults.data.training_mode, 50)
            torch.manual_seed(0)
            model = build_model("mp4sr", {**params, "stage": stage}, context)
            settings = TrainSettings(epochs=1, batch_size=defaults.train.batch_size, progress=False,
                                     threads=args.threads)
            trainer = Trainer(model, split, examples, settings, EvalSettings(), 50)
            trainers[name, stage] = trainer, torch.optim.Adam(model.parameters(), lr=1e-3)
    seconds = median_epoch_seconds(trainers, args.rounds)
    print(f"\n{args.dataset}: seconds per epoch, median of {args.rounds} rounds, {args.threads} thread(s); "
          f"wide = {recipes['wide']}")
    print(f"{'stage':9s} {'default':>8s} {'wide':>8s} {'wide/default':>13s}")
    for stage in STAGES:
        d, w = (seconds[name, stage] for name in recipes)
        print(f"{stage:9s} {d:8.2f} {w:8.2f} {w / d:13.2f}")


if __name__ == "__main__":
    main()
