"""Seconds per training epoch with glibc's malloc defaults and with freed memory kept (the default of
``Trainer.fit``, see ``mp4sr.train.allocator``), measured in alternating processes of one run.

Each round starts ``mp4sr_speed.py`` once with ``MP4SR_MALLOC=default`` and once without, so both
settings see the same machine load; the table gives the median over rounds of each model's seconds
per epoch, and the ratio kept / default (below 1: keeping freed memory is faster).

    python benchmarks/allocator.py --dataset amazon-scientific-mm --rounds 2 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

SPEED = Path(__file__).with_name("mp4sr_speed.py")
ROW = re.compile(r"^(sasrec|mp4sr-pretrain|mp4sr-finetune)\s+(\w+)\s+([\d.]+)\s")


def epoch_times(setting: str, args) -> dict[tuple[str, str], float]:
    env = dict(os.environ)
    env.pop("MP4SR_MALLOC", None)
    if setting == "default":
        env["MP4SR_MALLOC"] = "default"
    cmd = [sys.executable, str(SPEED), "--dataset", args.dataset, "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--forms", args.forms]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return {(m[1], m[2]): float(m[3]) for m in map(ROW.match, out.splitlines()) if m}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="amazon-scientific-mm")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--forms", default="sequence")
    args = p.parse_args()
    runs: dict[str, list[dict]] = {"default": [], "kept": []}
    for r in range(args.rounds):
        for setting in ("default", "kept"):
            runs[setting].append(epoch_times(setting, args))
            print(f"round {r + 1}/{args.rounds}: {setting} done", file=sys.stderr)
    keys = list(runs["default"][0])
    print(f"\n{args.dataset}: batch {args.batch_size}, seconds per epoch (median of {args.rounds} rounds x "
          f"{args.epochs} epochs)")
    print(f"{'model':16s} {'form':9s} {'default':>8s} {'kept':>8s} {'kept/default':>13s}")
    for key in keys:
        d = statistics.median(run[key] for run in runs["default"])
        k = statistics.median(run[key] for run in runs["kept"])
        print(f"{key[0]:16s} {key[1]:9s} {d:8.2f} {k:8.2f} {k / d:13.2f}")


if __name__ == "__main__":
    main()
