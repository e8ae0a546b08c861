"""Scale benchmark on SYNTHETIC data (benchmarks/synthetic.py): how memory, training and evaluation
costs grow with the catalogue.

For each catalogue size, in a fresh process (so that peak RSS is that configuration's alone):
generate users x interactions, split leave-one-out, build SASRec with the sampled softmax (log-Q),
time ``--steps`` training steps (seconds per epoch = steps per epoch x seconds per step), and
full-rank every item for ``--eval-users`` users (users/s). Prints one table with each cost's growth
relative to the smallest catalogue.

    python benchmarks/scale.py                                   # 100k, 300k, 1M items; 1M users, 20M interactions
    python benchmarks/scale.py --items 10000,30000 --users 20000 --interactions 400000 --steps 5   # quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(args) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from synthetic import synthetic_dataset

    from mp4sr.data import leave_one_out
    from mp4sr.data.batching import train_batches
    from mp4sr.data.split import EvalSet
    from mp4sr.evaluate import full_ranking
    from mp4sr.models import ModelContext, build_model

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    dataset, _ = synthetic_dataset(args.users, args.n_items, args.interactions, seed=0)
    split = leave_one_out(dataset)
    examples = split.train_examples("sequence", 50)
    counts = split.train_counts()
    data_seconds = time.perf_counter() - t
    context = ModelContext(n_items=dataset.n_items, max_len=50, item_counts=counts)
    torch.manual_seed(0)
    model = build_model("sasrec", {"loss": "sampled", "negatives": args.negatives}, context)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    values = torch.from_numpy(dataset.sequences.items)
    batches = train_batches(values, examples, args.batch_size, np.random.default_rng(0))
    model.train()
    times = []
    for step, batch in zip(range(args.steps + 1), batches):
        t = time.perf_counter()
        loss = model.calculate_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:  # the first step pays one-off allocations
            times.append(time.perf_counter() - t)
    step_seconds = float(np.median(times))
    steps_per_epoch = -(-len(examples) // args.batch_size)
    rows = np.random.default_rng(1).choice(len(split.test), min(args.eval_users, len(split.test)), replace=False)
    test = split.test
    subset = EvalSet(test.users[rows], test.hist_start[rows], test.hist_end[rows], test.targets[rows])
    t = time.perf_counter()
    full_ranking(model, values, subset, 50, (10,), 1024)
    eval_seconds = time.perf_counter() - t
    return {
        "items": dataset.n_items, "users": dataset.n_users, "interactions": dataset.n_interactions,
        "train_examples": len(examples), "data_seconds": round(data_seconds, 2),
        "step_seconds": round(step_seconds, 4), "epoch_seconds": round(step_seconds * steps_per_epoch, 1),
        "eval_users_per_second": round(len(subset) / eval_seconds, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", default="100000,300000,1000000")
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--interactions", type=int, default=20_000_000)
    p.add_argument("--steps", type=int, default=30, help="training steps timed (after one warm-up step)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--negatives", type=int, default=1024)
    p.add_argument("--eval-users", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n-items", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print("RESULT_JSON " + json.dumps(one(args)), flush=True)
        return
    results = []
    for n in [int(x) for x in args.items.split(",")]:
        cmd = [sys.executable, __file__, "--one", "--n-items", str(n), "--users", str(args.users),
               "--interactions", str(args.interactions), "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--negatives", str(args.negatives), "--eval-users", str(args.eval_users),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT_JSON ")).split(" ", 1)[1])
        results.append(r)
        print(f"done: {n:,} items", file=sys.stderr, flush=True)
    base = results[0]
    print(f"\nSYNTHETIC data: {args.users:,} users, {args.interactions:,} interactions; SASRec, sampled softmax "
          f"({args.negatives} negatives, log-Q), batch {args.batch_size}, {args.threads} threads")
    print(f"{'items':>10s} {'peak RSS GiB':>13s} {'x':>5s} {'s/epoch':>9s} {'x':>5s} {'eval users/s':>13s} {'x':>5s} "
          f"{'data s':>7s}")
    for r in results:
        print(f"{r['items']:>10,d} {r['peak_rss_gib']:>13.2f} {r['peak_rss_gib'] / base['peak_rss_gib']:>5.2f} "
              f"{r['epoch_seconds']:>9.1f} {r['epoch_seconds'] / base['epoch_seconds']:>5.2f} "
              f"{r['eval_users_per_second']:>13.1f} {base['eval_users_per_second'] / r['eval_users_per_second']:>5.2f} "
              f"{r['data_seconds']:>7.1f}")
    print("x: cost relative to the first row (for evaluation: time per user); "
          "s/epoch = median step time x steps per epoch")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
