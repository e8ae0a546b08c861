"""Training steps with the blocked full softmax (``mp4sr.models.softmax``) against the plain
``F.cross_entropy`` over the whole score matrix, measured in alternating processes of one run.

Each measurement is a fresh process (the same batches, the same seed) that trains SASRec or MP4SR's
fine-tuning for ``--steps`` optimiser steps with one of the two forms; the table gives, per model
and form, the median over rounds of the median step time, the system (kernel) time per step, the
peak resident memory of the process, and the ratio blocked / plain (below 1: the blocked form is
faster or smaller).

    python benchmarks/full_softmax.py --dataset amazon-toys-mm --batch-size 512 --steps 12 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

MODELS = ("sasrec", "mp4sr")
FORMS = ("plain", "blocked")


def plain(outputs, items, targets, scale=1.0, bias=None):
    scores = outputs @ items.T
    if scale != 1.0:
        scores = scores * scale
    return F.cross_entropy(scores + bias if bias is not None else scores, targets)


def child(args) -> None:
    import numpy as np

    from mp4sr.data import leave_one_out, load_dataset, train_batches
    from mp4sr.features import feature_stores
    from mp4sr.models import ModelContext, bert4rec, build_model, mp4sr, sasrec, unisrec
    from mp4sr.train.allocator import keep_freed_memory

    keep_freed_memory()  # as Trainer.fit does
    torch.set_num_threads(args.threads)
    if args.form == "plain":
        for module in (sasrec, mp4sr, unisrec, bert4rec):
            module.full_softmax_loss = plain
    dataset = load_dataset(args.dataset)
    split = leave_one_out(dataset)
    stores = {m: s for m, s in feature_stores(dataset, progress=False).items() if s is not None}
    context = ModelContext(dataset.n_items, 50, split.train_counts(), features=stores)
    torch.manual_seed(0)
    params = {"stage": "finetune"} if args.model == "mp4sr" else {}
    model = build_model(args.model, params, context).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    values = torch.from_numpy(split.dataset.sequences.items)
    batches = train_batches(values, split.train_examples("sequence", 50), args.batch_size, np.random.default_rng(0))
    times, system, outputs = [], [], 0
    for step, batch in zip(range(args.steps + 2), batches):
        sys_before, start = resource.getrusage(resource.RUSAGE_SELF).ru_stime, time.perf_counter()
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
        if step >= 2:  # the first steps allocate what later steps reuse
            times.append(time.perf_counter() - start)
            system.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys_before)
            outputs += int((batch.targets >= 0).sum())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"step": statistics.median(times), "system": statistics.mean(system), "peak_gib": peak,
                      "outputs": outputs / len(times)}))


def measure(args, model: str, form: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", model, "--form", form, "--dataset", args.dataset,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="amazon-scientific-mm")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="sasrec", help=argparse.SUPPRESS)
    p.add_argument("--form", default="blocked", choices=FORMS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    models = args.models.split(",")
    runs = {(m, f): [] for m in models for f in FORMS}
    for r in range(args.rounds):
        for model in models:
            for form in FORMS:
                runs[model, form].append(measure(args, model, form))
                print(f"round {r + 1}/{args.rounds}: {model} {form} done", file=sys.stderr)
    outputs = statistics.median(run["outputs"] for run in runs[models[0], "plain"])
    print(f"\n{args.dataset}: batch {args.batch_size} (about {outputs:.0f} outputs a step), {args.steps} steps, "
          f"{args.threads} thread(s), medians of {args.rounds} rounds")
    print(f"{'model':8s} {'form':8s} {'s/step':>7s} {'sys s/step':>10s} {'peak GiB':>9s}  {'blocked/plain':>13s}")
    for model in models:
        med = {f: {k: statistics.median(run[k] for run in runs[model, f]) for k in ("step", "system", "peak_gib")}
               for f in FORMS}
        for form in FORMS:
            ratio = (f"{med['blocked']['step'] / med['plain']['step']:.2f} time, "
                     f"{med['blocked']['peak_gib'] / med['plain']['peak_gib']:.2f} memory") if form == "blocked" else ""
            m = med[form]
            print(f"{model:8s} {form:8s} {m['step']:7.3f} {m['system']:10.3f} {m['peak_gib']:9.2f}  {ratio}")


if __name__ == "__main__":
    main()
