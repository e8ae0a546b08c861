"""Content of items added after training, encoded the way the model's feature stores were built.

Each modality's store manifest says how its vectors were made: 'sentences' (a text encoder over the
item's sentences), 'embed' / 'keywords' (an image encoder), or 'imported' (precomputed vectors, e.g.
CLIP, whose encoder is not available here: the request must then carry the vector itself).
A new item without any content for a modality gets a masked entry (the model's 'missing' input).
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mp4sr.config import AUTO, FeatureSettings
from mp4sr.errors import ConfigError, DataError, MP4SRError
from mp4sr.models.items import ItemTable


@dataclass
class NewItem:
    """One item to add. ``image``: a PIL image or the bytes of an image file; ``image_base64``: those
    bytes base64-encoded (HTTP); ``image_path``: a file (Python API only). ``text_vector`` /
    ``image_vector``: precomputed vectors in the space of the model's stores (they win over content)."""

    id: str
    text: str | None = None
    image: Any = None
    image_path: str | None = None
    image_base64: str | None = None
    text_vector: Sequence[float] | None = None
    image_vector: Sequence[float] | None = None

    @classmethod
    def parse(cls, raw: "NewItem | Mapping[str, Any]") -> "NewItem":
        if isinstance(raw, NewItem):
            return raw
        if not isinstance(raw, Mapping):
            raise DataError(f"a new item must be a mapping with at least 'id', got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DataError(f"new item {raw.get('id')!r}: unknown field(s) {unknown}; use {sorted(known)}")
        if not str(raw.get("id") or "").strip():
            raise DataError(f"a new item has no 'id': {dict(raw)!r:.200}")
        return cls(**{**raw, "id": str(raw["id"]).strip()})

    def vector(self, modality: str) -> Sequence[float] | None:
        return self.text_vector if modality == "text" else self.image_vector

    def has_content(self, modality: str) -> bool:
        if modality == "text":
            return bool((self.text or "").strip())
        return any(x is not None for x in (self.image, self.image_path, self.image_base64))

    def open_image(self, size: int):
        """The item's image as an RGB PIL image."""
        from PIL import Image

        from mp4sr.features.images import open_image

        try:
            if self.image_path is not None:
                return open_image(self.image_path, size)
            if isinstance(self.image, Image.Image):
                return self.image.convert("RGB")
            data = self.image if self.image is not None else base64.b64decode(self.image_base64, validate=True)
            with Image.open(io.BytesIO(data)) as image:
                return image.convert("RGB")
        except (OSError, ValueError, binascii.Error, SyntaxError) as e:
            raise DataError(f"new item {self.id!r}: cannot read its image ({type(e).__name__}: {e})") from None


class ModalityEncoder:
    """Turns new items into rows of one modality's ItemTable ([n, k, dim] vectors and [n, k] mask)."""

    def __init__(self, modality: str, manifest: Mapping[str, Any], k: int, dim: int,
                 features: FeatureSettings | None = None):
        self.modality, self.manifest, self.k, self.dim = modality, dict(manifest), k, dim
        self.mode = str(self.manifest.get("mode", "imported"))
        self.features = features or FeatureSettings()  # the run's: which encoders were asked for

    def encode(self, items: Sequence[NewItem]) -> ItemTable:
        vectors = torch.zeros(len(items), self.k, self.dim)
        mask = torch.zeros(len(items), self.k, dtype=torch.bool)
        to_encode = []
        for row, item in enumerate(items):
            given = item.vector(self.modality)
            if given is not None:
                vectors[row, 0] = self._check(item, given)
                mask[row, 0] = True
            elif item.has_content(self.modality):
                to_encode.append(row)
        if to_encode:
            self._encode_content([items[r] for r in to_encode], to_encode, vectors, mask)
        return ItemTable(vectors, mask)

    def _check(self, item: NewItem, vector: Sequence[float]) -> torch.Tensor:
        try:
            v = torch.as_tensor(np.asarray(vector, dtype=np.float32))
        except (TypeError, ValueError):
            raise DataError(f"new item {item.id!r}: {self.modality}_vector must be a list of numbers") from None
        if v.shape != (self.dim,):
            raise DataError(f"new item {item.id!r}: {self.modality}_vector has shape {tuple(v.shape)}, the model's "
                            f"{self.modality} vectors have {self.dim} values ({self.source})")
        if not torch.isfinite(v).all():
            raise DataError(f"new item {item.id!r}: {self.modality}_vector holds NaN or inf")
        return v

    @property
    def source(self) -> str:
        return f"{self.manifest.get('encoder', '?')}, {self.mode}"

    def _encode_content(self, items: list[NewItem], rows: list[int], vectors: torch.Tensor, mask: torch.Tensor) -> None:
        """Encode the content of ``items`` into ``vectors[rows]`` / ``mask[rows]``."""
        if self.mode == "imported":
            raise DataError(
                f"new item {items[0].id!r}: the model's {self.modality} vectors were imported from "
                f"{self.manifest.get('source') or self.manifest.get('encoder')} and their encoder is not available "
                f"here, so its {self.modality} cannot be encoded. Give '{self.modality}_vector' ({self.dim} numbers from "
                f"the same encoder) instead, or leave the {self.modality} out (it is then masked)."
            )
        per_item = self._text_pieces(items) if self.modality == "text" else self._image_pieces(items)
        flat = [piece for pieces in per_item for piece in pieces]
        encoded = torch.from_numpy(self._encode_pieces(flat)).float()
        if encoded.shape[1] != self.dim:
            raise ConfigError(f"the {self.modality} encoder gives {encoded.shape[1]}-d vectors, the store {self.dim}-d")
        start = 0
        for row, pieces in zip(rows, per_item):
            vectors[row, : len(pieces)] = encoded[start : start + len(pieces)]
            mask[row, : len(pieces)] = True
            start += len(pieces)

    # ------------------------------------------------------------------ text

    def _text_pieces(self, items: Sequence[NewItem]) -> list[list[str]]:
        from mp4sr.features.text import cap, split_text

        split = self.manifest.get("split", AUTO)
        split = "sentences" if split in (AUTO, "fields") else split  # new items come with plain text
        return [cap(split_text(item.text or "", split), self.k) for item in items]

    # ------------------------------------------------------------------ images

    def _image_pieces(self, items: Sequence[NewItem]) -> list[list[Any]]:
        size = self.image_encoder.image_size
        return [[item.open_image(size)] for item in items]

    def _encode_pieces(self, pieces: list[Any]) -> np.ndarray:
        if self.modality == "text":
            return self.text_encoder.encode(pieces)
        if self.mode == "embed":
            return self.image_encoder.embed(pieces)
        if self.mode == "keywords":
            n = int(self.manifest.get("n_keywords", self.features.n_keywords))
            sentences = [", ".join(words) for words in self.image_encoder.keywords(pieces, n)]
            return self.text_encoder.encode(sentences)
        raise ConfigError(f"cannot encode new items for a {self.modality} store of mode {self.mode!r}")

    # ------------------------------------------------------------------ encoders, checked against the manifest

    @staticmethod
    def _spec(value: str | None) -> str | None:
        """An encoder setting as the loaders take it (None: the default encoder)."""
        return None if value in (None, AUTO) else value

    @cached_property
    def text_encoder(self):
        from mp4sr.features.text import load_text_encoder

        encoder = load_text_encoder(self._spec(self.features.text))
        key = "encoder_fingerprint" if self.modality == "text" else "text_encoder_fingerprint"
        self._same(encoder, self.manifest.get(key), "text")
        return encoder

    @cached_property
    def image_encoder(self):
        from mp4sr.features.images import load_image_encoder

        encoder = load_image_encoder(self._spec(self.features.image))
        self._same(encoder, self.manifest.get("encoder_fingerprint"), "image")
        return encoder

    def _same(self, encoder, fingerprint: str | None, kind: str) -> None:
        if fingerprint and encoder.fingerprint != fingerprint:
            raise MP4SRError(
                f"the {self.modality} store was built with the {kind} encoder {fingerprint!r}, but the one available "
                f"here is {encoder.fingerprint!r}: new items would land in another vector space. Install the same "
                f"encoder, or give precomputed '{self.modality}_vector's."
            )
