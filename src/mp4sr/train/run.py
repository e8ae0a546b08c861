"""One training run from a RunConfig: data -> split -> model -> trainer -> metrics.json, test ranks + checkpoint."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from mp4sr.config import RunConfig
from mp4sr.data import Dataset, LeaveOneOut, leave_one_out, training_data
from mp4sr.features import dataset_features
from mp4sr.errors import ConfigError
from mp4sr.models import ModelContext, build_model, model_class
from mp4sr.models.base import Pretrainable, SequentialRecommender, reads_content
from mp4sr.train import distributed
from mp4sr.train.checkpoint import feature_manifest
from mp4sr.train.trainer import EpochRecord, Trainer, TrainResult, seed_everything

log = logging.getLogger("mp4sr.train")


@dataclass
class RunOutput:
    config: RunConfig
    dataset: Dataset
    split: LeaveOneOut
    model: Any
    result: TrainResult

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"valid": self.result.valid, "test": self.result.test, "best_epoch": self.result.best_epoch}
        if self.result.test_by_protocol:
            out["test_by_protocol"] = {name: r.metrics for name, r in self.result.test_by_protocol.items()}
        return out

    def params(self) -> dict[str, Any]:
        """The model's settings as it ran: the config's, and those it chose from the data."""
        return {**self.config.params, **self.model.data_settings()}


def checkpoint_payload(config: RunConfig, dataset: Dataset, model=None) -> dict[str, Any]:
    """What a checkpoint holds beside the weights: enough to rebuild the model and map item ids
    (``data_settings``: what the model chose from the data, see ``SequentialRecommender.data_settings``)."""
    return {
        "model_name": config.model,
        "config": config.model_dump(mode="json"),
        "data_settings": {} if model is None else model.data_settings(),
        "item_ids": [str(i) for i in dataset.items.ids],
        "dataset": dataset.name,
    }


def read_pretrained(checkpoint: str | Path) -> dict[str, Any]:
    """The (pre-training) checkpoint a run starts from."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} not found")
    return torch.load(path, map_location="cpu", weights_only=True)


def inherited_params(config: RunConfig, pretrained: dict[str, Any] | None) -> dict[str, Any]:
    """``config.params`` over what the pre-trained model chose from its data (its modalities...): a
    fine-tuning keeps the choices of its pre-training unless its own settings say otherwise."""
    fields = model_class(config.model).Config.model_fields
    chosen = {k: v for k, v in ((pretrained or {}).get("data_settings") or {}).items() if k in fields}
    return {**chosen, **config.params}


def load_encoder(model: SequentialRecommender, pretrained: dict[str, Any]) -> None:
    """Start ``model`` from the weights of a (pre-training) checkpoint read by ``read_pretrained``."""
    if not isinstance(model, Pretrainable):
        raise ConfigError(f"model {model.name!r} cannot start from a pre-trained checkpoint")
    model.load_pretrained(pretrained["state_dict"])


def save_test_ranks(result: TrainResult, out: Path) -> None:
    """``test_ranks.npy``: the 0-based rank of each test user's item (in the order of the leave-one-out
    split), for paired tests between runs (``mp4sr compare``); with ``eval.test_both_protocols`` also
    ``test_ranks_history_kept.npy`` and ``test_ranks_history_excluded.npy``."""
    np.save(out / "test_ranks.npy", np.asarray(result.test_ranks, dtype=np.int64))
    for protocol, ranking in result.test_by_protocol.items():
        np.save(out / f"test_ranks_{protocol}.npy", np.asarray(ranking.ranks, dtype=np.int64))


def train_run(config: RunConfig, out_dir: str | Path | None = None, dataset: Dataset | None = None,
              resume: bool = False,
              on_epoch: Callable[[EpochRecord], None] | None = None) -> RunOutput:
    """Train and evaluate ``config.model`` on ``config.dataset``; writes its outputs into ``out_dir``.
    ``resume``: continue the interrupted run in ``out_dir`` from its ``last.pt`` (same settings);
    ``on_epoch``: called with each epoch's record (loss, validation metrics) as it ends."""
    dataset, parts = training_data(config.dataset, config.data, dataset)
    split = leave_one_out(dataset)
    features = None
    if reads_content(model_class(config.model)):
        if not distributed.is_main():  # rank 0 computes (or imports) and caches them first
            distributed.barrier()
        features = dataset_features(config.features, dataset, parts, progress=config.train.progress)
        if distributed.is_main():
            distributed.barrier()
    context = ModelContext(
        n_items=dataset.n_items, max_len=config.data.max_len, item_counts=split.train_counts(), features=features,
        dataset=dataset.name,
    )
    pretrained = read_pretrained(config.init_from) if config.init_from else None
    seed_everything(config.train.seed)  # the initial weights depend on the seed alone (torch's default seed varies)
    params = inherited_params(config, pretrained)
    try:
        model = build_model(config.model, params, context)
    except ConfigError as e:
        inherited = [f"params.{k}" for k in params if k not in config.params]
        if not inherited:
            raise
        raise ConfigError(f"{e}. Here {', '.join(inherited)} came from the pre-trained checkpoint {config.init_from}: "
                          "its encoder was trained on them") from None
    if pretrained is not None:
        load_encoder(model, pretrained)
    examples = split.train_examples(config.data.training_mode, config.data.max_len)
    out = Path(out_dir) if out_dir else None
    if out and distributed.is_main():
        try:
            out.mkdir(parents=True, exist_ok=True)
            if not (resume and (out / "config.yaml").is_file()):  # a resumed run keeps the config it started with
                (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        except OSError as e:
            raise ConfigError(f"cannot write in the output folder {out}: {e.strerror or e}") from None
    trainer = Trainer(
        model, split, examples, config.train, config.eval, config.data.max_len, out,
        checkpoint_extra=checkpoint_payload(config, dataset, model), feature_manifest=feature_manifest(features), resume=resume,
        on_epoch=on_epoch,
    )
    result = trainer.fit()
    output = RunOutput(config, dataset, split, model, result)
    if out and distributed.is_main():
        (out / "metrics.json").write_text(json.dumps(output.metrics(), indent=2))
        save_test_ranks(result, out)
    distributed.barrier()  # what rank 0 wrote is there before any process goes on
    return output
