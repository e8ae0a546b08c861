"""MP4SR training steps with the content encoder's paths for one vector per item (no pooling) and for
constant content (no input gradient in the MoE adaptor's linear map), against the plain form (pooling,
then the adaptor of ``where(present, pooled, missing)``), measured in alternating processes of one run.

Each measurement is a fresh process that trains MP4SR's pre-training and fine-tuning for ``--steps``
steps on the same batches; the table gives the median over rounds of the median step time and the
ratio fast / plain.

    python benchmarks/content_encoder.py --dataset amazon-toys-mm --steps 10 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

STAGES = {"pretrain": 1024, "finetune": 512}  # batch sizes: the pre-training default, toys.yaml's fine-tuning


def plain_forward(self, table, items=None):
    vectors, mask = (table.vectors, table.mask) if items is None else (table.vectors[items], table.mask[items])
    e = self.pool(vectors.float(), mask)
    return self.adaptor(torch.where(mask.any(-1, keepdim=True), e, self.missing))


def child(args) -> None:
    import numpy as np

    from mp4sr.data import leave_one_out, load_dataset, train_batches
    from mp4sr.features import feature_stores
    from mp4sr.models import ModelContext, build_model
    from mp4sr.models.items import ContentEncoder
    from mp4sr.train.allocator import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    if args.form == "plain":
        ContentEncoder.forward = plain_forward
    dataset = load_dataset(args.dataset)
    split = leave_one_out(dataset)
    stores = {m: s for m, s in feature_stores(dataset, progress=False).items() if s is not None}
    context = ModelContext(dataset.n_items, 50, split.train_counts(), features=stores)
    values = torch.from_numpy(dataset.sequences.items)
    result = {}
    for stage, batch_size in STAGES.items():
        torch.manual_seed(0)
        model = build_model("mp4sr", {"stage": stage}, context).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batches = train_batches(values, split.train_examples("sequence", 50), batch_size, np.random.default_rng(0))
        times = []
        for _, batch in zip(range(args.steps + 2), batches):
            start = time.perf_counter()
            optimizer.zero_grad()
            model.calculate_loss(batch).backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        result[stage] = statistics.median(times[2:])  # the first steps allocate what later steps reuse
    print(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="amazon-toys-mm")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--form", default="fast", choices=("plain", "fast"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    runs = {"plain": [], "fast": []}
    for r in range(args.rounds):
        for form in runs:
            cmd = [sys.executable, __file__, "--child", "--form", form, "--dataset", args.dataset,
                   "--steps", str(args.steps), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[form].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds}: {form} done", file=sys.stderr)
    print(f"\n{args.dataset}: MP4SR seconds per step, median of {args.rounds} rounds x {args.steps} steps, "
          f"{args.threads} thread(s)")
    print(f"{'stage':9s} {'plain':>7s} {'fast':>7s} {'fast/plain':>11s}")
    for stage in STAGES:
        plain, fast = (statistics.median(run[stage] for run in runs[form]) for form in ("plain", "fast"))
        print(f"{stage:9s} {plain:7.3f} {fast:7.3f} {fast / plain:11.2f}")


if __name__ == "__main__":
    main()
