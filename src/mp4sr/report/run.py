"""The short report of `mp4sr run`: the metrics of both stages as a Markdown table, and their
learning curves (``curves.png``, from each stage's ``epochs.jsonl``) beside it."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("mp4sr.report")
STAGES = {"pretrain": "pre-training", "finetune": "fine-tuning"}


def metrics_markdown(rows: dict[str, dict[str, float]], ks=(5, 10, 20, 50)) -> str:
    """One row per named metric set, columns Recall/NDCG/MRR at each K."""
    names = [f"{m}@{k}" for m in ("recall", "ndcg", "mrr") for k in ks]
    lines = ["| | " + " | ".join(n.replace("recall", "R").replace("ndcg", "N").replace("mrr", "MRR") for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for label, values in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{values[n]:.4f}" if n in values else "-" for n in names) + " |")
    return "\n".join(lines)


def pretraining_data(cfg) -> str:
    """What a pre-training ran on, in words: its dataset, any joined ones, any users left out."""
    text = " + ".join([cfg.dataset, *cfg.data.join_datasets])
    if cfg.data.exclude_users_of:
        text += f" (without the users of {', '.join(cfg.data.exclude_users_of)})"
    return text


def write_run_report(out: Path, pretrain: dict[str, Any], finetune: dict[str, Any], pre_cfg, fin_cfg,
                     pre_params: dict[str, Any] | None = None) -> Path:
    """Write ``out/report.md`` and return its path; ``pre_params``: the pre-trained model's settings as it
    ran (with what it chose from the data), by default its config's."""
    from mp4sr.models.base import model_class, parse_model_config

    title = f"{model_class(fin_cfg.model).title} on {fin_cfg.dataset}"
    id_embedding = parse_model_config(fin_cfg.model, fin_cfg.params).model_dump().get("id_embedding")
    mode = "" if id_embedding is None else f", {'transductive' if id_embedding else 'inductive'}"
    source = pretraining_data(pre_cfg)
    modalities = (pre_cfg.params if pre_params is None else pre_params).get("modalities") or ["those of the data"]
    pre_label = "pre-trained (content only), test" if source == fin_cfg.dataset else \
        f"pre-trained (content only), test on {source}"
    text = [
        f"# {title}",
        "",
        "Full ranking over all items, leave-one-out; test metrics of the best validation epoch "
        f"(selected on {fin_cfg.train.valid_metric}).",
        "",
        metrics_markdown({
            pre_label: pretrain["test"],
            "fine-tuned, valid": finetune["valid"],
            "fine-tuned, test": finetune["test"],
        }, fin_cfg.eval.ks),
        "",
        f"- pre-training on {source}: best epoch {pretrain['best_epoch']}, modalities {', '.join(modalities)}",
        f"- fine-tuning: best epoch {finetune['best_epoch']}{mode}",
        f"- checkpoints: `{out / 'pretrain' / 'best.pt'}`, `{out / 'finetune' / 'best.pt'}`",
        "",
    ]
    curves = learning_curves(out, fin_cfg.train.valid_metric, title)
    if curves is not None:
        text += ["## Learning curves", "", f"![learning curves]({curves.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(text))
    return path


def learning_curves(out: Path, metric: str, title: str) -> Path | None:
    """``out/curves.png``: training loss and validation ``metric`` per epoch of the stages in
    ``out/pretrain`` and ``out/finetune``; None when no stage recorded an epoch or matplotlib is missing."""
    histories = {}
    for folder, label in STAGES.items():
        records = out / folder / "epochs.jsonl"
        if records.is_file():
            rows = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
            if rows:
                histories[(label, 0)] = rows
    if not histories:
        return None
    if importlib.util.find_spec("matplotlib") is None:
        log.info("matplotlib is not installed: the report has no learning curves (pip install 'mp4sr[report]')")
        return None
    from mp4sr.report.plots import training_curves

    roles = {"pre-training": "baseline", "fine-tuning": "reference"}
    return training_curves(histories, roles, metric, out / "curves.png", title, loss=True)
