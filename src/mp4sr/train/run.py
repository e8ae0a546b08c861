"""One training run from a RunConfig: data -> split -> model -> trainer -> metrics.json + checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mp4sr.config import RunConfig
from mp4sr.data import Dataset, LeaveOneOut, leave_one_out, load_dataset
from mp4sr.models import ModelContext, build_model
from mp4sr.train.trainer import Trainer, TrainResult


@dataclass
class RunOutput:
    config: RunConfig
    dataset: Dataset
    split: LeaveOneOut
    model: Any
    result: TrainResult

    def metrics(self) -> dict[str, dict[str, float]]:
        return {"valid": self.result.valid, "test": self.result.test, "best_epoch": self.result.best_epoch}


def checkpoint_payload(config: RunConfig, dataset: Dataset) -> dict[str, Any]:
    """What a checkpoint holds beside the weights: enough to rebuild the model and map item ids."""
    return {
        "model_name": config.model,
        "config": config.model_dump(mode="json"),
        "item_ids": [str(i) for i in dataset.items.ids],
        "dataset": dataset.name,
    }


def train_run(config: RunConfig, out_dir: str | Path | None = None, dataset: Dataset | None = None,
              context_extras: dict[str, Any] | None = None) -> RunOutput:
    """Train and evaluate ``config.model`` on ``config.dataset``; writes its outputs into ``out_dir``."""
    dataset = dataset or load_dataset(config.dataset, config.data.user_core, config.data.item_core)
    split = leave_one_out(dataset)
    context = ModelContext(
        n_items=dataset.n_items, max_len=config.data.max_len, item_counts=split.train_counts(),
        extras={"dataset": dataset, **(context_extras or {})},
    )
    model = build_model(config.model, config.params, context)
    examples = split.train_examples(config.data.training_mode, config.data.max_len)
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    trainer = Trainer(
        model, split, examples, config.train, config.eval, config.data.max_len, out,
        checkpoint_extra=checkpoint_payload(config, dataset),
    )
    result = trainer.fit()
    output = RunOutput(config, dataset, split, model, result)
    if out:
        (out / "metrics.json").write_text(json.dumps(output.metrics(), indent=2))
    return output
