"""Seconds per epoch of SASRec and both MP4SR stages on the CPU and on a GPU, in float32 and under
bfloat16 autocast (``train.precision=bf16``), with the validation metric each reaches after the same
epochs from the same initial weights (the precisions and devices should agree within noise).

Every setting trains through ``train_run`` (the pipeline of ``mp4sr train``), ``--epochs`` epochs
without early stopping; seconds per epoch are the median of the epochs after the first (which pays
for warming up: CUDA context, kernel selection, allocator). Ratios are against the CPU in float32.

    # on a GPU machine: CPU and GPU, fp32 and bf16
    python benchmarks/gpu.py --dataset amazon-toys-mm --epochs 5
    # the CPU alone (what a machine without a GPU can measure)
    python benchmarks/gpu.py --dataset amazon-scientific-mm --devices cpu --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mp4sr.config import RunConfig, build_config
from mp4sr.data import load_dataset
from mp4sr.stages import stage_base
from mp4sr.train import train_run

MODELS = {"sasrec": {"model": "sasrec", "train": {"batch_size": 1024}},
          "mp4sr-pretrain": stage_base("mp4sr", "pretrain"), "mp4sr-finetune": stage_base("mp4sr", "finetune")}


def measure(name: str, dataset, device: str, precision: str, epochs: int, metric: str) -> dict:
    settings = [f"train.device={device}", f"train.precision={precision}", f"train.epochs={epochs}",
                f"train.patience={epochs + 1}", "train.progress=false", "train.tensorboard=false", "train.seed=0"]
    config = build_config(RunConfig, overrides=settings, base=MODELS[name], dataset=dataset.name)
    start = time.perf_counter()
    result = train_run(config, None, dataset).result
    seconds = [r.train_seconds for r in result.history]
    timed = seconds[1:] if len(seconds) > 1 else seconds
    return {"model": name, "device": device, "precision": precision, "epoch_s": statistics.median(timed),
            "eval_s": statistics.median(r.eval_seconds for r in result.history),
            "valid": result.history[-1].valid[metric], "total_s": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="amazon-toys-mm")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    p.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--metric", default="ndcg@10")
    args = p.parse_args()
    dataset = load_dataset(args.dataset)
    rows = [measure(name, dataset, device, precision, args.epochs, args.metric)
            for name in args.models.split(",") for device in args.devices.split(",")
            for precision in args.precisions.split(",")]
    gpu = torch.cuda.get_device_name(0) if "cuda" in args.devices else "none"
    print(f"\n{args.dataset}: {args.epochs} epochs from the same initial weights, {torch.get_num_threads()} CPU threads, "
          f"GPU {gpu}, torch {torch.__version__}")
    print(f"{'model':15s} {'device':6s} {'prec':5s} {'s/epoch':>8s} {'x faster':>9s} {'eval s':>7s} "
          f"{'valid ' + args.metric:>14s} {'diff':>8s}")
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["device"] == "cpu" and b["precision"] == "fp32") \
            if "cpu" in args.devices and "fp32" in args.precisions else r
        print(f"{r['model']:15s} {r['device']:6s} {r['precision']:5s} {r['epoch_s']:8.3f} "
              f"{base['epoch_s'] / r['epoch_s']:9.2f} {r['eval_s']:7.3f} {r['valid']:14.4f} {r['valid'] - base['valid']:+8.4f}")


if __name__ == "__main__":
    main()
