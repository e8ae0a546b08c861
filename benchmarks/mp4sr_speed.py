"""Seconds per epoch of MP4SR pre-training and fine-tuning, against SASRec in the same run.

The authors' RecBole-based code was measured at 60-86 s per pre-training epoch and 58-76 s per
fine-tuning epoch on amazon-scientific-mm on 2 cores (batch 1024); those reference figures are
printed beside ours. Both of our training forms are timed: ``prefix`` (one example per prefix,
the same examples as the authors' code) and ``sequence`` (whole sequences, every position a target).

    python benchmarks/mp4sr_speed.py --dataset amazon-scientific-mm --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from mp4sr.config import EvalSettings, TrainSettings
from mp4sr.data import leave_one_out, load_dataset
from mp4sr.features import feature_stores
from mp4sr.models import ModelContext, build_model
from mp4sr.train import Trainer
from mp4sr.train.allocator import keep_freed_memory

AUTHORS = {"pretrain": (60, 86), "finetune": (58, 76)}


def epoch_seconds(model, split, mode: str, batch_size: int, epochs: int) -> float:
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, progress=False)
    trainer = Trainer(model, split, split.train_examples(mode, 50), settings, EvalSettings(), 50)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        trainer.train_epoch(optimizer, rng, epoch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="amazon-scientific-mm")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--forms", default="prefix,sequence", help="training forms to time, comma-separated")
    args = p.parse_args()
    kept = keep_freed_memory()  # as Trainer.fit does; MP4SR_MALLOC=default turns it off
    dataset = load_dataset(args.dataset)
    split = leave_one_out(dataset)
    stores = {m: s for m, s in feature_stores(dataset, progress=False).items() if s is not None}
    context = ModelContext(dataset.n_items, 50, split.train_counts(), features=stores)
    rows = []
    for mode in args.forms.split(","):
        torch.manual_seed(0)
        sasrec = epoch_seconds(build_model("sasrec", {}, context), split, mode, args.batch_size, args.epochs)
        rows.append(("sasrec", mode, sasrec, sasrec))
        for stage in ("pretrain", "finetune"):
            torch.manual_seed(0)
            model = build_model("mp4sr", {"stage": stage}, context)
            rows.append((f"mp4sr-{stage}", mode, epoch_seconds(model, split, mode, args.batch_size, args.epochs), sasrec))
    print(f"\n{args.dataset}: batch {args.batch_size}, median of {args.epochs} epochs, {torch.get_num_threads()} threads, "
          f"{'freed memory kept' if kept else 'glibc malloc defaults'}")
    print(f"{'model':16s} {'form':9s} {'s/epoch':>8s} {'/ SASRec':>9s} {'authors s':>10s} {'x faster':>10s}")
    for name, mode, seconds, sasrec in rows:
        stage = name.split("-")[-1]
        ref = AUTHORS.get(stage)
        faster = f"{ref[0] / seconds:.0f}-{ref[1] / seconds:.0f}" if ref else "-"
        authors = f"{ref[0]}-{ref[1]}" if ref else "-"
        print(f"{name:16s} {mode:9s} {seconds:8.2f} {seconds / sasrec:9.2f} {authors:>10s} {faster:>10s}")


if __name__ == "__main__":
    main()
