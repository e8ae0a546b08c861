"""The canonical in-memory dataset: an item catalogue plus every user's chronological sequence.

Sequences are stored in CSR form: ``offsets`` (n_users + 1) and ``items`` (all interactions, user
after user, oldest first). Item indexes are dense, 0..n_items-1; external ids live in the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mp4sr.errors import DataError


@dataclass(frozen=True)
class VectorFiles:
    """Precomputed vectors kept one file per item (``.pth`` tensors or ``.npy`` arrays): item id -> file.
    ``listing`` is where the files were named (a listing file or their folder), for messages and names.
    Items without an entry, or whose file is absent, have no vector."""

    files: dict[str, Path]
    listing: Path


@dataclass
class ItemCatalogue:
    """External ids of the items (row i = item index i) and their optional content.

    ``text`` holds one string per item ("" when an item has none); ``fields`` optional named text
    fields (title, categories, ...); ``image_paths`` one path or None per item.
    """

    ids: np.ndarray
    text: list[str] | None = None
    fields: dict[str, list[str]] = field(default_factory=dict)
    image_paths: list[str | None] | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=object)
        n = len(self.ids)
        for name, values in [("text", self.text), ("image_paths", self.image_paths), *self.fields.items()]:
            if values is not None and len(values) != n:
                raise DataError(f"item catalogue: '{name}' has {len(values)} entries for {n} items")

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self) -> dict[str, int]:
        """Map external id -> item index."""
        return {str(item): i for i, item in enumerate(self.ids)}


@dataclass
class Sequences:
    """Variable-length integer sequences in CSR form."""

    offsets: np.ndarray
    items: np.ndarray

    def __post_init__(self) -> None:
        # int64 arrays (memory-mapped ones included) are kept as they are, never copied
        if not (isinstance(self.offsets, np.ndarray) and self.offsets.dtype == np.int64):
            self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if not (isinstance(self.items, np.ndarray) and self.items.dtype == np.int64):
            self.items = np.asarray(self.items, dtype=np.int64)

    @classmethod
    def from_lists(cls, seqs: list[list[int]] | list[np.ndarray]) -> "Sequences":
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        items = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) if seqs else np.zeros(0, np.int64)
        return cls.from_lengths(lengths, items)

    @classmethod
    def from_lengths(cls, lengths: np.ndarray, items: np.ndarray) -> "Sequences":
        """Sequences of the given lengths, one after the other in ``items``."""
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(offsets, items)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    def save(self, folder: str | Path) -> Path:
        """Write ``offsets.npy`` and ``items.npy`` into ``folder`` (for ``load(..., mmap=True)``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("offsets", "items"):
            tmp = folder / f".{name}.tmp.npy"
            np.save(tmp, getattr(self, name))
            tmp.replace(folder / f"{name}.npy")
        return folder

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> "Sequences":
        """Sequences saved by ``save``; with ``mmap`` the arrays stay on disk and pages are read on
        demand (copy-on-write: the files never change), so a process holds only what it touches."""
        folder = Path(folder)
        try:
            arrays = [np.load(folder / f"{n}.npy", mmap_mode="c" if mmap else None) for n in ("offsets", "items")]
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read sequences from {folder}: {e}") from None
        offsets, items = arrays
        if offsets.dtype != np.int64 or items.dtype != np.int64 or len(offsets) == 0 or offsets[-1] != len(items):
            raise DataError(f"{folder}: offsets.npy and items.npy do not form CSR sequences")
        return cls(offsets, items)


@dataclass
class Dataset:
    """Items, users and each user's full chronological sequence of item indexes."""

    name: str
    items: ItemCatalogue
    user_ids: np.ndarray
    sequences: Sequences
    source: Path | None = None
    # Vectors that came with the data (e.g. precomputed CLIP vectors), 'text_vectors' / 'image_vectors':
    # the path of a matrix file, or one file per item.
    extras: dict[str, Path | VectorFiles] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.user_ids = np.asarray(self.user_ids, dtype=object)
        if len(self.user_ids) != len(self.sequences):
            raise DataError(f"dataset {self.name}: {len(self.user_ids)} users but {len(self.sequences)} sequences")
        if len(self.sequences.items) and (
            self.sequences.items.min() < 0 or self.sequences.items.max() >= len(self.items)
        ):
            raise DataError(f"dataset {self.name}: sequences refer to items outside the catalogue")

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_interactions(self) -> int:
        return len(self.sequences.items)

    def without_users(self, user_ids) -> "Dataset":
        """The same catalogue with the users of ``user_ids`` (external ids) and their sequences removed;
        ids not in the dataset are ignored."""
        drop = {str(u) for u in user_ids}
        keep = np.fromiter((str(u) not in drop for u in self.user_ids), dtype=bool, count=self.n_users)
        if keep.all():
            return self
        rows = np.repeat(keep, self.sequences.lengths)
        sequences = Sequences.from_lengths(self.sequences.lengths[keep], self.sequences.items[rows])
        return Dataset(self.name, self.items, self.user_ids[keep], sequences, self.source, dict(self.extras))

    def summary(self) -> dict[str, float | int | str]:
        lengths = self.sequences.lengths
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "avg_length": float(lengths.mean()) if len(lengths) else 0.0,
            "max_length": int(lengths.max()) if len(lengths) else 0,
            "density": self.n_interactions / max(1, self.n_users * self.n_items),
        }


def join_datasets(parts: list[Dataset]) -> Dataset:
    """One dataset holding the users and items of several (e.g. pre-training on several domains). Ids are
    prefixed with their dataset's name (``name/id``), so two datasets' items or users never merge; item
    indexes follow the order of ``parts``."""
    names = [d.name for d in parts]
    if len(set(names)) != len(names):
        raise DataError(f"cannot join datasets of the same name: {', '.join(names)}")
    offsets = np.cumsum([0] + [d.n_items for d in parts])
    text = None
    if any(d.items.text is not None for d in parts):
        text = [t for d in parts for t in (d.items.text or [""] * d.n_items)]
    fields = {name: [v for d in parts for v in d.items.fields.get(name, [""] * d.n_items)]
              for name in dict.fromkeys(f for d in parts for f in d.items.fields)}
    images = None
    if any(d.items.image_paths is not None for d in parts):
        images = [v for d in parts for v in (d.items.image_paths or [None] * d.n_items)]
    items = ItemCatalogue(np.array([f"{d.name}/{i}" for d in parts for i in d.items.ids], dtype=object),
                          text=text, fields=fields, image_paths=images)
    users = np.array([f"{d.name}/{u}" for d in parts for u in d.user_ids], dtype=object)
    sequences = Sequences.from_lengths(np.concatenate([d.sequences.lengths for d in parts]),
                                       np.concatenate([d.sequences.items + off for d, off in zip(parts, offsets)]))
    return Dataset("+".join(names), items, users, sequences)

