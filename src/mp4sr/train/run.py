"""One training run from a RunConfig: data -> split -> model -> trainer -> metrics.json + checkpoint."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from mp4sr.config import RunConfig
from mp4sr.data import Dataset, LeaveOneOut, exclude_users_of, join_datasets, leave_one_out, load_dataset
from mp4sr.data.loader import users_of
from mp4sr.errors import ConfigError
from mp4sr.models import ModelContext, build_model, model_class
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


def dataset_features(config: RunConfig, dataset: Dataset, parts: list[Dataset] | None = None) -> dict[str, Any]:
    """The dataset's feature stores (computed or imported once, then read from the cache). ``parts``: the
    datasets that ``dataset`` joins, whose stores are computed one by one and then joined."""
    from mp4sr.features import feature_stores
    from mp4sr.features.store import join_stores

    f = config.features

    def stores_of(data: Dataset) -> dict[str, Any]:
        return feature_stores(
            data, text=f.text, image=f.image, image_mode=f.image_mode, image_from=f.image_from,
            max_vectors=f.max_vectors, progress=config.train.progress,
        )

    if parts and len(parts) > 1:
        each = [stores_of(part) for part in parts]
        sizes = [part.n_items for part in parts]
        stores = {m: join_stores(dataset.name, m, [s[m] for s in each], sizes, dataset.items.ids)
                  for m in ("text", "image")}
    else:
        stores = stores_of(dataset)
    found = {m: s for m, s in stores.items() if s is not None}
    for store in found.values():
        store.check_matches(dataset.items.ids)
    return found


def load_encoder(model, checkpoint: str | Path) -> None:
    """Start ``model`` from the weights of a (pre-training) checkpoint."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not hasattr(model, "load_pretrained"):
        raise ConfigError(f"model {model.name!r} cannot start from a pre-trained checkpoint")
    model.load_pretrained(state["state_dict"])


def run_dataset(config: RunConfig, dataset: Dataset | None = None) -> tuple[Dataset, list[Dataset]]:
    """The data a run trains on: ``config.dataset`` (or ``dataset``, already loaded) joined with
    ``data.join_datasets``, each without the users of ``data.exclude_users_of``; and the parts joined."""
    d = config.data
    parts = [dataset or load_dataset(config.dataset, d.user_core, d.item_core)]
    parts += [load_dataset(name, d.user_core, d.item_core) for name in d.join_datasets]
    if d.exclude_users_of:
        drop = users_of(d.exclude_users_of, d.user_core, d.item_core)  # read once for every part
        for i, part in enumerate(parts):
            parts[i] = exclude_users_of(part, d.exclude_users_of, drop=drop)
            log.info("%s: %d users of %s left out, %d remain", part.name, part.n_users - parts[i].n_users,
                     ", ".join(d.exclude_users_of), parts[i].n_users)
    if len(parts) == 1:
        return parts[0], parts
    joined = join_datasets(parts)
    log.info("joined %s: %d users, %d items", joined.name, joined.n_users, joined.n_items)
    return joined, parts


def train_run(config: RunConfig, out_dir: str | Path | None = None, dataset: Dataset | None = None,
              context_extras: dict[str, Any] | None = None, resume: bool = False,
              on_epoch: Callable[[EpochRecord], None] | None = None) -> RunOutput:
    """Train and evaluate ``config.model`` on ``config.dataset``; writes its outputs into ``out_dir``.
    ``resume``: continue the interrupted run in ``out_dir`` from its ``last.pt`` (same settings);
    ``on_epoch``: called with each epoch's record (loss, validation metrics) as it ends."""
    dataset, parts = run_dataset(config, dataset)
    split = leave_one_out(dataset)
    features = None
    if getattr(model_class(config.model), "needs_features", False):
        if not distributed.is_main():  # rank 0 computes (or imports) and caches them first
            distributed.barrier()
        features = dataset_features(config, dataset, parts)
        if distributed.is_main():
            distributed.barrier()
    context = ModelContext(
        n_items=dataset.n_items, max_len=config.data.max_len, item_counts=split.train_counts(), features=features,
        extras={"dataset": dataset, **(context_extras or {})},
    )
    seed_everything(config.train.seed)  # the initial weights depend on the seed alone (torch's default seed varies)
    model = build_model(config.model, config.params, context)
    if config.init_from:
        load_encoder(model, config.init_from)
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
        checkpoint_extra=checkpoint_payload(config, dataset), feature_manifest=feature_manifest(features), resume=resume,
        on_epoch=on_epoch,
    )
    result = trainer.fit()
    output = RunOutput(config, dataset, split, model, result)
    if out and distributed.is_main():
        (out / "metrics.json").write_text(json.dumps(output.metrics(), indent=2))
    distributed.barrier()  # what rank 0 wrote is there before any process goes on
    return output
