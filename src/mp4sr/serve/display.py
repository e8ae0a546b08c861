"""What a person sees of the items: a title and, where the catalogue has one, a photo file.

Titles come from the catalogue's fields (``title``, else the first field named like a title or a
name, else the first field), else from the first sentence of the item's text, else the id. Photos are
the catalogue's image paths, served only when the file is there and is an image; an id is the only
way to reach one, so no path from a client is ever opened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from mp4sr.data.dataset import ItemCatalogue

TITLE_LENGTH = 120  # characters of a title, at most
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".gif": "image/gif"}
_FIRST_SENTENCE = re.compile(r"^\s*(?:title\s*:\s*)?(.+?)(?:\s*[.;]\s+|\s*;|$)", re.IGNORECASE | re.DOTALL)


def shorten(text: str, length: int) -> str:
    """``text`` cut to at most ``length`` characters, an ellipsis saying so."""
    return text if len(text) <= length else text[: length - 1].rstrip() + "…"


def title_field(fields: Sequence[str]) -> str | None:
    """The catalogue field that names an item: 'title', else the first with 'title' or 'name' in its
    name (``prod_name``), else the first field."""
    names = list(fields)
    lower = [name.lower() for name in names]
    for wanted in (lambda n: n == "title", lambda n: "title" in n, lambda n: "name" in n):
        for name, low in zip(names, lower):
            if wanted(low):
                return name
    return names[0] if names else None


def text_title(text: str) -> str:
    """The first sentence of an item's text ('Title: ...' prefixes dropped), cut to TITLE_LENGTH."""
    match = _FIRST_SENTENCE.match(text or "")
    return shorten(match.group(1).strip() if match else "", TITLE_LENGTH)


@dataclass
class ItemDisplay:
    """Title, text and photo file of each item, row i = item index i (the Recommender's order)."""

    ids: np.ndarray
    titles: list[str]
    texts: list[str]
    image_paths: list[str | None]
    _images: dict[int, Path | None] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, item_ids: Sequence[str], catalogue: ItemCatalogue | None, texts: Sequence[str]) -> "ItemDisplay":
        """The items of a model: the first ``len(catalogue)`` are the catalogue's, any after it were added
        later and are known by their text only."""
        n_base = len(catalogue) if catalogue is not None else 0
        titles = [""] * len(item_ids)
        images: list[str | None] = [None] * len(item_ids)
        if catalogue is not None:
            name = title_field(list(catalogue.fields))
            if name is not None:
                titles[:n_base] = [str(v).strip() for v in catalogue.fields[name]]
            if catalogue.image_paths is not None:
                images[:n_base] = list(catalogue.image_paths)
        titles = [shorten(t, TITLE_LENGTH) or text_title(text) or str(item) for t, text, item in zip(titles, texts, item_ids)]
        return cls(np.asarray(item_ids, dtype=object), titles, [str(t or "") for t in texts], images)

    @classmethod
    def exported(cls, item_ids: Sequence[str], saved: dict, folder: Path, texts: Sequence[str]) -> "ItemDisplay":
        """The items of an exported model: the titles and photos it was exported with (photos copied into
        its folder are named relative to it), then any added later, known by their text only."""
        n_base = len(saved["titles"])
        titles = list(saved["titles"]) + [text_title(t) or str(i) for t, i in zip(texts[n_base:], item_ids[n_base:])]
        images = [None if p is None else str(folder / p) for p in saved["image_paths"]] + [None] * (len(item_ids) - n_base)
        return cls(np.asarray(item_ids, dtype=object), titles, [str(t or "") for t in texts], images)

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def _search_keys(self) -> list[str]:
        return [f"{title}\n{item}".lower() for title, item in zip(self.titles, self.ids)]

    def search(self, query: str, limit: int, popularity: np.ndarray) -> tuple[list[int], int]:
        """Indexes of the items whose title or id holds every word of ``query`` (case-insensitive), an
        exact id first, then titles that start with the query, then by popularity; and how many matched.
        An empty query matches every item (the most popular first)."""
        words = query.lower().split()
        matched = np.fromiter((all(w in key for w in words) for key in self._search_keys), dtype=bool,
                              count=len(self)) if words else np.ones(len(self), dtype=bool)
        found = np.flatnonzero(matched)
        phrase = " ".join(words)
        exact = np.fromiter((str(self.ids[i]).lower() == phrase for i in found), dtype=bool, count=len(found))
        starts = np.fromiter((self.titles[i].lower().startswith(phrase) for i in found), dtype=bool, count=len(found))
        pop = np.zeros(len(found)) if popularity is None else np.asarray(popularity, dtype=np.float64)[found]
        order = np.lexsort((found, -pop, ~starts, ~exact))  # the last key sorts first
        return found[order[:limit]].tolist(), len(found)

    def image_file(self, index: int) -> Path | None:
        """The photo of item ``index``: its catalogue path when that is an image file that exists."""
        if index not in self._images:
            raw = self.image_paths[index]
            path = Path(raw) if raw else None
            ok = path is not None and path.suffix.lower() in IMAGE_TYPES and path.is_file()
            self._images[index] = path if ok else None
        return self._images[index]
