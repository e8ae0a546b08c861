"""An exported model: one folder that serves with no dataset and no feature cache.

    DIR/model.pt          weights, config, item ids and text, each item's content vectors (in the dtype of
                          the feature store they come from: float16 by default) and training popularity,
                          the feature stores' manifests (how new items are encoded), every user's sequence
                          (for `mp4sr export`), and the model card
    DIR/model_card.json   data, settings, validation and test metrics, date
    DIR/README.md         the same card, for people

`mp4sr export-model` writes it from a run folder (``mp4sr.serve.packaging``, on the machine that has the
dataset and the feature cache); `Recommender.load(DIR)` reads it anywhere. This module holds the format. model.pt holds only tensors, numbers, strings, lists
and dicts, so ``torch.load(weights_only=True)`` reads it; ``format`` says which layout it has, and
``digest`` is a SHA-256 of everything else: torch's zip reader checks no checksums, so bytes damaged in
transfer would otherwise load as other weights or vectors.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mp4sr.errors import DataError

MODEL_FILE = "model.pt"
MODEL_KIND = "model"
MODEL_FORMAT = 1  # the layout below; a reader refuses any other
MODEL_KEYS = ("state_dict", "model_name", "config", "item_ids", "item_text", "popularity", "item_content", "users",
              "display")
IMAGES_DIR = "images"  # photos copied by `export-model --images`, named by item index
MANIFEST_SHOWN = ("encoder", "mode", "shape", "dtype")


def check_model_payload(payload: Mapping[str, Any], path: Path) -> None:
    """A model file of this format with every part (a clear error for another version's file)."""
    found = payload.get("format")
    if found != MODEL_FORMAT:
        raise DataError(
            f"this model was exported in format {found!r} (by mp4sr {payload.get('mp4sr_version', '?')}); this "
            f"version of mp4sr reads format {MODEL_FORMAT}: export it again from its run folder with this version "
            f"(`mp4sr export-model --checkpoint RUN --out DIR`)", path)
    missing = [key for key in MODEL_KEYS if key not in payload]
    if missing:
        raise DataError(f"the model file lacks {missing}: it is damaged; export it again (`mp4sr export-model`)", path)
    if payload.get("digest") != payload_digest(payload):
        raise DataError("the model file is damaged: its contents do not match the digest written with them; copy "
                        "it again, or export it again (`mp4sr export-model`)", path)


def payload_digest(payload: Mapping[str, Any]) -> str:
    """SHA-256 of every part of ``payload`` but its ``digest`` (tensors by dtype, shape and bytes)."""
    h = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, Mapping):
            h.update(f"D{len(value)}".encode())
            for key in sorted(value, key=str):
                feed(str(key))
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            h.update(f"L{len(value)}".encode())
            for item in value:
                feed(item)
        else:
            text = repr(value).encode()
            h.update(f"V{len(text)}:".encode() + text)

    feed({k: v for k, v in payload.items() if k != "digest"})
    return h.hexdigest()


def sealed(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` with the digest of its contents."""
    return {**payload, "digest": payload_digest(payload)}


def user_sequences(payload: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user ids, offsets, items) of the model file's users."""
    users = payload["users"]
    return (np.asarray(users["ids"], dtype=object), users["offsets"].numpy().astype(np.int64),
            users["items"].numpy().astype(np.int64))


# --------------------------------------------------------------------------- writing
