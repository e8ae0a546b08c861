#!/usr/bin/env python
"""Run RecBole 1.2.1's SASRec (or GRU4Rec, BERT4Rec) on a fixed UniSRec-layout train/valid/test split.

Run with the python of the virtualenv made by ``setup_env.sh`` (it holds
recbole==1.2.1 and its pinned dependencies; the mp4sr venv does not).

The split is used exactly as given through RecBole's ``benchmark_filename``
mechanism (as UniSRec does): ``<name>.{train,valid,test}.inter`` are symlinked
into ``<workdir>/data/<name>/`` and RecBole reads each file as one of its three
datasets without re-splitting, re-ordering or augmenting anything: one row of
``item_id_list`` -> ``item_id`` is one training example (train) or one ranked
query (valid/test).

Prints one line ``RESULT_JSON {...}`` at the end with per-epoch training wall
seconds, the median seconds of one full-ranking pass over the test set, the
valid and test metrics of the best-valid epoch, and the number of training rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

SPLITS = ("train", "valid", "test")
METRIC_KEYS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
MODELS = ("SASRec", "GRU4Rec", "BERT4Rec")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, type=Path,
                   help="UniSRec-layout folder with <name>.{train,valid,test}.inter")
    p.add_argument("--dataset-name", default="Scientific",
                   help="file prefix inside --data-dir (default: Scientific)")
    p.add_argument("--model", default="SASRec", choices=MODELS,
                   help="RecBole model; SASRec's settings are spelled out below, the others take RecBole's defaults")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (RecBole's default 1e-3)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--patience", type=int, default=None,
                   help="RecBole stopping_step: stop after this many evaluations without a "
                        "valid NDCG@10 improvement (default: never stop before --epochs)")
    p.add_argument("--train-batch-size", type=int, default=2048)
    p.add_argument("--eval-batch-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--eval-repeats", type=int, default=3,
                   help="timed full-ranking passes over the test set (median is reported)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="scratch dir (default: ${MP4SR_CACHE_DIR:-~/.cache/mp4sr}/recbole-work/<name>)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="only warnings from RecBole's logger")
    return p.parse_args(argv)


def prepare_workdir(data_dir: Path, name: str, workdir: Path) -> Path:
    """Symlink the three .inter files into <workdir>/data/<name>/; return the data root."""
    data_dir = data_dir.resolve()
    workdir = workdir.resolve()
    if workdir == data_dir or data_dir in workdir.parents:
        raise SystemExit(f"--workdir {workdir} must not be inside the data dir {data_dir}")
    ds_dir = workdir / "data" / name
    ds_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        src = data_dir / f"{name}.{split}.inter"
        if not src.is_file():
            raise SystemExit(f"missing {src}")
        dst = ds_dir / f"{name}.{split}.inter"
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src)
    return workdir / "data"


def count_rows(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip()) - 1  # minus header


def main(argv=None):
    args = parse_args(argv)
    name = args.dataset_name
    cache = Path(os.environ.get("MP4SR_CACHE_DIR", Path.home() / ".cache" / "mp4sr"))
    workdir = (args.workdir or cache / "recbole-work" / name).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data_root = prepare_workdir(args.data_dir, name, workdir)
    expected_train_rows = count_rows(args.data_dir / f"{name}.train.inter")

    # RecBole's Config also parses sys.argv ("--key=value" pairs become config
    # entries), and its logger / tensorboard writer write ./log and
    # ./log_tensorboard relative to the cwd: isolate both.
    sys.argv = sys.argv[:1]
    os.chdir(workdir)

    import warnings

    # Deprecation noise from RecBole 1.2.1 on newer pandas/torch (Series.agg(len),
    # torch.cuda.amp.GradScaler); harmless, results unchanged.
    warnings.filterwarnings("ignore", category=FutureWarning)

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model import sequential_recommender
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    config_dict = {
        # environment
        "data_path": str(data_root),
        "checkpoint_dir": str(workdir / "saved"),
        "use_gpu": False,
        "device": "cpu",
        "seed": args.seed,
        "reproducibility": True,
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "log_wandb": False,
        "state": "WARNING" if args.quiet else "INFO",
        # data: the fixed split, exactly as in the files (as UniSRec does it)
        "benchmark_filename": list(SPLITS),
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"]},
        "alias_of_item_id": ["item_id_list"],  # history tokens share the item id space
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "MAX_ITEM_LIST_LENGTH": 50,
        # no filtering of any kind (the defaults already keep everything; spelled out)
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "rm_dup_inter": None,
        "val_interval": None,
        "loss_type": "CE",
        "train_neg_sample_args": None,  # RecBole requires None for CE (softmax over all items)
        # training
        "epochs": args.epochs,
        "train_batch_size": args.train_batch_size,
        "learner": "adam",
        "learning_rate": args.lr,
        "weight_decay": 0.0,
        "eval_step": 1,
        "stopping_step": args.patience if args.patience is not None else 10**9,
        "shuffle": True,
        # evaluation: full ranking over all items. With benchmark files RecBole
        # ignores `split` (the three files are the three sets) and `order`.
        "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user",
                      "order": "TO", "mode": "full"},
        "repeatable": True,  # required by RecBole for sequential models
        "metrics": ["Recall", "NDCG"],
        "topk": [10, 20],
        "valid_metric": "NDCG@10",
        "valid_metric_bigger": True,
        "eval_batch_size": args.eval_batch_size,
        "metric_decimal_place": 6,
    }
    if args.model == "SASRec":  # RecBole's defaults (recbole/properties/model/SASRec.yaml), spelled out
        config_dict.update({
            "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256, "hidden_dropout_prob": 0.5,
            "attn_dropout_prob": 0.5, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02,
        })
    # History masking: for *sequential* models RecBole 1.2.1 does NOT mask the
    # user's previously interacted items in full ranking.
    # FullSortEvalDataLoader only builds uid2history_item when
    # MODEL_TYPE != SEQUENTIAL; for SASRec its batches carry history_index=None,
    # so Trainer._full_sort_batch_eval only sets the padding item's score
    # (column 0) to -inf. Every real item, including items already in the
    # query's item_id_list, competes; each valid/test row is one query whose
    # single positive is its item_id.
    config = Config(model=args.model, dataset=name, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = logging.getLogger()

    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    n_rows = {s: len(d.dataset) for s, d in zip(SPLITS, (train_data, valid_data, test_data))}
    if n_rows["train"] != expected_train_rows:
        logger.warning(f"RecBole sees {n_rows['train']} training rows, file has {expected_train_rows}")

    init_seed(config["seed"], config["reproducibility"])
    model = getattr(sequential_recommender, args.model)(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)

    # --- timing hooks -------------------------------------------------------
    epoch_seconds: list[float] = []
    valid_seconds: list[float] = []
    valid_history: list[dict] = []
    orig_train_epoch = trainer._train_epoch
    orig_valid_epoch = trainer._valid_epoch

    def timed_train_epoch(*a, **kw):
        t0 = time.perf_counter()
        out = orig_train_epoch(*a, **kw)
        epoch_seconds.append(time.perf_counter() - t0)
        return out

    def timed_valid_epoch(*a, **kw):
        t0 = time.perf_counter()
        score, result = orig_valid_epoch(*a, **kw)
        valid_seconds.append(time.perf_counter() - t0)
        valid_history.append({k: float(v) for k, v in result.items()})
        return score, result

    trainer._train_epoch = timed_train_epoch
    trainer._valid_epoch = timed_valid_epoch

    t_fit = time.perf_counter()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=True, show_progress=False, verbose=not args.quiet
    )
    fit_seconds = time.perf_counter() - t_fit

    # Load the best-valid checkpoint ourselves: Trainer.evaluate(load_best_model=True)
    # calls torch.load() without weights_only=False, which fails on torch>=2.6
    # (the checkpoint pickles RecBole's Config and RNG states).
    ckpt = torch.load(trainer.saved_model_file, map_location=config["device"], weights_only=False)
    model.load_state_dict(ckpt["state_dict"])
    model.load_other_parameter(ckpt.get("other_parameter"))
    best_epoch = int(ckpt["epoch"])

    test_result = None
    eval_times = []
    for _ in range(max(1, args.eval_repeats)):
        t0 = time.perf_counter()
        test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        eval_times.append(time.perf_counter() - t0)

    def pick(res):
        return {k: float(res[k]) for k in METRIC_KEYS}

    result = {
        "epoch_seconds": [round(s, 4) for s in epoch_seconds],
        "eval_seconds": round(statistics.median(eval_times), 4),
        "eval_seconds_all": [round(s, 4) for s in eval_times],
        "valid_eval_seconds": [round(s, 4) for s in valid_seconds],
        "fit_seconds": round(fit_seconds, 3),
        "valid": pick(best_valid_result),
        "test": pick(test_result),
        "best_epoch": best_epoch,
        "epochs_run": len(epoch_seconds),
        "valid_ndcg@10_history": [round(v["ndcg@10"], 6) for v in valid_history],
        "n_train_rows": n_rows["train"],
        "n_valid_rows": n_rows["valid"],
        "n_test_rows": n_rows["test"],
        "n_train_rows_in_file": expected_train_rows,
        "n_items": int(dataset.item_num - 1),  # RecBole's item_num counts the [PAD] id 0
        "n_users": int(dataset.user_num - 1),
        "model": args.model,
        "learning_rate": args.lr,
        "max_seq_length": int(model.max_seq_length),
        "train_batch_size": args.train_batch_size,
        "eval_batch_size": args.eval_batch_size,
        "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
        "dataset": name,
        "data_dir": str(args.data_dir),
        "recbole_version": recbole.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
    }
    print("RESULT_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
