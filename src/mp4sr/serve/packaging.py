"""Writing an exported model: the folder of ``mp4sr.serve.model_file``'s format, made from a run folder
(its checkpoint, dataset and feature stores), with its model card and, optionally, the catalogue's photos."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mp4sr import __version__
from mp4sr.errors import DataError
from mp4sr.files import atomic_save
from mp4sr.serve.model_file import (IMAGES_DIR, MANIFEST_SHOWN, MODEL_FILE, MODEL_FORMAT, MODEL_KIND, sealed)
from mp4sr.serve.recommender import Recommender, checkpoint_file


def display_payload(rec: Recommender, out: Path, images: bool) -> dict[str, Any]:
    """The titles and photos the page shows. ``images``: the photos are copied into ``out/images`` and
    named relative to ``out``; otherwise their paths on this machine are kept (shown where they exist)."""
    n_base = rec.n_items - rec.n_added
    display = rec.item_display()
    paths: list[str | None] = []
    for index in range(n_base):
        photo = display.image_file(index)
        if photo is None or not images:
            paths.append(None if photo is None else str(photo))
            continue
        name = f"{IMAGES_DIR}/{index}{photo.suffix.lower()}"
        (out / IMAGES_DIR).mkdir(exist_ok=True)
        shutil.copyfile(photo, out / name)
        paths.append(name)
    return {"titles": display.titles[:n_base], "image_paths": paths}


def model_payload(rec: Recommender, card: Mapping[str, Any], display: Mapping[str, Any]) -> dict[str, Any]:
    """Everything ``rec`` (loaded from a run folder, with its dataset and stores) serves from."""
    n_base = rec.n_items - rec.n_added
    payload = {
        "kind": MODEL_KIND, "format": MODEL_FORMAT, "mp4sr_version": __version__,
        "model_name": rec.model_name, "config": rec.payload["config"], "dataset": rec.payload.get("dataset"),
        "state_dict": rec.model.state_dict(),
        "item_ids": [str(i) for i in rec.item_ids[:n_base]],
        "item_text": list(rec.item_text[:n_base]),
        "popularity": rec.popularity[:n_base].round().long(),
        "item_content": {m: {"vectors": torch.from_numpy(np.array(store.vectors)),
                             "mask": torch.from_numpy(np.array(store.mask, dtype=bool)),
                             "manifest": dict(store.manifest)} for m, store in rec.stores.items()},
        "users": {"ids": [str(u) for u in rec.users.ids],
                  "offsets": torch.from_numpy(rec.users.sequences.offsets.astype(np.int64)),
                  "items": torch.from_numpy(rec.users.sequences.items.astype(np.int32))},
        "card": dict(card),
        "display": dict(display),
    }
    if rec.payload.get("data_settings"):
        payload["data_settings"] = dict(rec.payload["data_settings"])  # the modalities it chose from its data
    if rec.n_added:
        payload["added_items"] = rec._added_payload()
    return payload


def model_card(rec: Recommender, source: Path) -> dict[str, Any]:
    """What a person asks of a model before using it: data, settings, metrics, date."""
    metrics_file = source.parent / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    data = rec.dataset
    return {
        "model": rec.model_name,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mp4sr_version": __version__,
        "format": MODEL_FORMAT,
        "trained_in": str(source.parent),
        "data": {"dataset": rec.payload.get("dataset"), "users": data.n_users, "items": data.n_items,
                 "interactions": data.n_interactions, "added_items": rec.n_added},
        "item_content": {m: {k: s.manifest.get(k) for k in MANIFEST_SHOWN} for m, s in rec.stores.items()},
        "metrics": metrics,  # {"valid": {...}, "test": {...}, "best_epoch": N} of the run, None when it has none
        "settings": rec.payload["config"],
    }


def card_markdown(card: Mapping[str, Any]) -> str:
    data, metrics = card["data"], card.get("metrics") or {}
    lines = [f"# {card['model']} on {data['dataset']}", "",
             f"Exported {card['exported']} by mp4sr {card['mp4sr_version']} (model format {card['format']}) "
             f"from `{card['trained_in']}`.", "",
             f"- data: {data['users']:,} users, {data['items']:,} items, {data['interactions']:,} interactions"
             + (f", {data['added_items']:,} items added after training" if data["added_items"] else "")]
    lines += [f"- {m} content: {c['encoder']} ({c['mode']}), {c['shape']} {c['dtype']}"
              for m, c in card["item_content"].items()]
    settings = card["settings"]
    lines += [f"- settings: params {json.dumps(settings.get('params', {}))}; train "
              f"{json.dumps({k: settings['train'][k] for k in ('lr', 'batch_size', 'epochs', 'patience') if k in settings.get('train', {})})}"]
    test = metrics.get("test")
    if test:
        lines += ["", f"Test metrics (best validation epoch {metrics.get('best_epoch')}, full ranking):", "",
                  "| metric | value |", "|---|---:|", *(f"| {k} | {v:.4f} |" for k, v in test.items())]
    else:
        lines += ["", "The run folder held no metrics.json: no test metrics."]
    lines += ["", "Serve it with `mp4sr serve --checkpoint <this folder>`; the settings are in `model_card.json`.", ""]
    return "\n".join(lines)


def export_model(checkpoint: str | Path, out: str | Path, images: bool = False) -> Path:
    """Write the model of a run folder (or ``best.pt``) to the folder ``out``; returns ``out/model.pt``.
    ``images``: copy the catalogue's photos into ``out/images`` too."""
    source = checkpoint_file(checkpoint)
    rec = Recommender.load(source)
    if rec.dataset is None:
        raise DataError(f"{source} is an exported model already: copy its folder instead", source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    card = model_card(rec, source)
    file = out / MODEL_FILE
    atomic_save(sealed(model_payload(rec, card, display_payload(rec, out, images))), file)
    card["files"] = {MODEL_FILE: file.stat().st_size}
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "README.md").write_text(card_markdown(card))
    return file
