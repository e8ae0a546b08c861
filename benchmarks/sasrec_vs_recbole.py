"""SASRec: mp4sr against RecBole 1.2.1, same split, same hyper-parameters, in one run.

Prints seconds per training epoch and per full-ranking evaluation of both, their ratios, and both
test Recall@10 / NDCG@10. RecBole runs in its own virtualenv (benchmarks/recbole/setup_env.sh).

    python benchmarks/sasrec_vs_recbole.py --dataset amazon-scientific-mm --epochs 200 --patience 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

from mp4sr.config import RunConfig, build_config
from mp4sr.data import find_dataset
from mp4sr.evaluate import full_ranking
from mp4sr.paths import cache_dir
from mp4sr.train import train_run

HERE = Path(__file__).resolve().parent


def run_recbole(data_dir: Path, args) -> dict:
    venv = Path(os.environ.get("RECBOLE_VENV", cache_dir() / "recbole-venv"))
    subprocess.run(["bash", str(HERE / "recbole" / "setup_env.sh"), str(venv)], check=True)
    prefix = next(data_dir.glob("*.train.inter")).name.split(".")[0]
    cmd = [
        str(venv / "bin" / "python"), str(HERE / "recbole" / "run_recbole.py"), "--data-dir", str(data_dir),
        "--dataset-name", prefix, "--epochs", str(args.epochs), "--patience", str(args.patience),
        "--train-batch-size", str(args.batch_size), "--seed", str(args.seed), "--quiet",
        "--workdir", str(cache_dir() / "recbole-work" / data_dir.name),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("RESULT_JSON "))
    return json.loads(line.split(" ", 1)[1])


def run_ours(dataset: str, mode: str, args) -> dict:
    cfg: RunConfig = build_config(RunConfig, overrides=[
        "model=sasrec", f"dataset={dataset}", f"data.training_mode={mode}", f"train.epochs={args.epochs}",
        f"train.patience={args.patience}", f"train.batch_size={args.batch_size}", f"train.seed={args.seed}",
        "train.lr=1e-3", "train.weight_decay=0", "train.progress=false",
        "train.clip_grad=null",  # RecBole's clip_grad_norm is None by default
    ])
    out = train_run(cfg, cache_dir() / "bench-sasrec" / f"{Path(dataset).name}-{mode}")
    trainer_values = torch.from_numpy(out.dataset.sequences.items)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        full_ranking(out.model, trainer_values, out.split.test, cfg.data.max_len, cfg.eval.ks, cfg.train.eval_batch_size)
        times.append(time.perf_counter() - t)
    return {
        "epoch_seconds": [r.train_seconds for r in out.result.history],
        "eval_seconds": statistics.median(times),
        "test": out.result.test,
        "best_epoch": out.result.best_epoch,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="amazon-scientific-mm")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--modes", default="sequence,prefix", help="our training modes to run")
    args = p.parse_args()
    data_dir = find_dataset(args.dataset)
    results = {"recbole": run_recbole(data_dir, args)}
    for mode in args.modes.split(","):
        results[f"mp4sr-{mode}"] = run_ours(args.dataset, mode, args)

    rb = results["recbole"]
    rb_epoch = statistics.median(rb["epoch_seconds"])
    print(f"\nSASRec on {args.dataset}: batch {args.batch_size}, up to {args.epochs} epochs, patience {args.patience}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'':18s} {'s/epoch':>9s} {'x faster':>9s} {'eval s':>8s} {'x faster':>9s} {'epochs':>7s} "
          f"{'R@10':>7s} {'N@10':>7s} {'N@10 vs RecBole':>16s}")
    for name, r in results.items():
        epoch = statistics.median(r["epoch_seconds"])
        print(f"{name:18s} {epoch:9.2f} {rb_epoch / epoch:9.1f} {r['eval_seconds']:8.3f} "
              f"{rb['eval_seconds'] / r['eval_seconds']:9.1f} {len(r['epoch_seconds']):7d} "
              f"{r['test']['recall@10']:7.4f} {r['test']['ndcg@10']:7.4f} "
              f"{r['test']['ndcg@10'] / rb['test']['ndcg@10'] - 1:+16.1%}")
    saved = cache_dir() / f"bench-sasrec-{data_dir.name}.json"
    saved.write_text(json.dumps(results, indent=1))
    print(f"all figures: {saved}")


if __name__ == "__main__":
    main()
