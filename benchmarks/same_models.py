"""Every model trains to the same weights and metrics before and after a change (a restructuring must
not change results): two epochs of each model on amazon-scientific-mm, one thread, seed 7 (MP4SR and
UniSRec variants pre-trained, fine-tuned from that, and from scratch), recording test and valid metrics
and a SHA-256 of the state dict.

    python benchmarks/same_models.py save before   # on the old commit
    python benchmarks/same_models.py save after    # on the new one
    python benchmarks/same_models.py compare before after   # exit 1 when any metrics differ

Records go to $MP4SR_SAME_MODELS (default runs/same-models/)."""
import hashlib
import json
import os
import sys
from pathlib import Path
import torch
from mp4sr.config import RunConfig, build_config
from mp4sr.train import train_run

OUT = Path(os.environ.get("MP4SR_SAME_MODELS", "runs/same-models"))
DATA = "amazon-scientific-mm"
COMMON = ["train.epochs=2", "train.threads=1", "train.progress=false", "train.tensorboard=false", "train.seed=7"]
MODELS = {
    "pop": [], "sasrec": [], "sasrec-sampled": ["params.loss=sampled"], "gru4rec": [], "bert4rec": [], "cl4srec": [],
    "sasrecm": [], "sasrecm-inductive": ["params.id_embedding=false"], "fdsa": [],
    "mp4sr": [], "mp4sr-inductive": ["params.id_embedding=false"], "mp4sr-text": ["params.modalities=[text]"],
    "unisrec": [], "unisrec-inductive": ["params.id_embedding=false"],
}

def digest(state):
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode()); h.update(state[k].detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]

def one(name, extra, out, init_from=None, stage=None):
    model = name.split("-")[0]
    sets = COMMON + extra + ([f"params.stage={stage}"] if stage else [])
    cfg = build_config(RunConfig, None, sets, model=model, dataset=DATA, init_from=init_from)
    o = train_run(cfg, out)
    m = o.metrics()
    return {"test": m["test"], "valid": m["valid"], "best_epoch": m["best_epoch"],
            "state": digest(o.model.state_dict()), "keys": sorted(o.model.state_dict())}

def save(tag):
    res = {}
    work = OUT / tag
    for name, extra in MODELS.items():
        if name.split("-")[0] in ("mp4sr", "unisrec"):
            pre = one(name, [e for e in extra if "id_embedding" not in e], work / name / "pre", stage="pretrain")
            res[name + "/pre"] = pre
            res[name] = one(name, extra, work / name / "fin", init_from=str(work / name / "pre"), stage="finetune")
            res[name + "/scratch"] = one(name, extra, work / name / "scratch", stage="finetune")
        else:
            res[name] = one(name, extra, work / name)
        print(name, res[name]["test"]["ndcg@10"], res[name]["state"], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{tag}.json").write_text(json.dumps(res, indent=1))

def compare(a, b):
    A, B = (json.loads((OUT / f"{t}.json").read_text()) for t in (a, b))
    bad = 0
    for k in A:
        if k not in B: print("missing", k); bad += 1; continue
        same = A[k]["test"] == B[k]["test"] and A[k]["valid"] == B[k]["valid"]
        print(f"{k:28s} metrics {'same' if same else 'DIFFER'}  state {'same' if A[k]['state']==B[k]['state'] else 'DIFFER'}"
              f"  keys {'same' if A[k]['keys']==B[k]['keys'] else 'DIFFER'}")
        bad += not same
    sys.exit(1 if bad else 0)

if __name__ == "__main__":
    {"save": save, "compare": compare}[sys.argv[1]](*sys.argv[2:])
