"""A trained model behind an API of external item ids (ASINs...), never internal indexes.

It loads from an exported model folder (``mp4sr export-model``: self-contained, no dataset or feature
cache needed, no training code imported) or from a run folder's ``best.pt`` (which reloads the
training dataset and its feature stores). Scores are the model's ``full_sort_predict`` on the last
``max_len`` items of a history, exactly what the offline evaluation ranks; an empty history falls back
to popularity (training counts). Content models that score items from content tables
(``ExtensibleCatalogue``) can take new items without retraining: they are scored from their content alone.
"""

from __future__ import annotations

import pickle
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from mp4sr.config import RunConfig
from mp4sr.data import Dataset, Sequences, leave_one_out, load_dataset
from mp4sr.data.batching import SequenceBatch, gather_windows
from mp4sr.errors import ConfigError, DataError
from mp4sr.evaluate import topk_items
from mp4sr.models import REGISTRY, ModelContext, build_model, model_class
from mp4sr.models.base import ContentModel, can_add_items, reads_content
from mp4sr.models.items import ItemTable
from mp4sr.files import atomic_save
from mp4sr.serve.display import ItemDisplay
from mp4sr.serve.errors import DuplicateItemsError, UnknownItemsError, UnsupportedError
from mp4sr.serve.model_file import MODEL_FILE, MODEL_KIND, check_model_payload, sealed, user_sequences
from mp4sr.serve.new_items import ModalityEncoder, NewItem

POPULARITY = "popularity"
CHECKPOINT_KEYS = ("state_dict", "model_name", "config", "item_ids")


@dataclass
class Recommendation:
    """The ranked (item id, score) of one history; ``fallback`` says when no model scored it."""

    items: list[tuple[str, float]]
    fallback: str | None = None  # "popularity" when the history had no (known) item
    skipped: list[str] = field(default_factory=list)  # unknown ids dropped with skip_unknown


@dataclass
class Users:
    """The users a model was trained on (external ids) and their whole sequences (item indexes)."""

    ids: np.ndarray
    sequences: Sequences

    @property
    def n_users(self) -> int:
        return len(self.ids)


def checkpoint_file(path: str | Path) -> Path:
    """A model file itself, an exported model folder (``model.pt``), or a run folder (``best.pt``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / MODEL_FILE if (path / MODEL_FILE).is_file() else path / "best.pt"
    if not path.is_file():
        hint = ""
        if (path.parent / "finetune" / "best.pt").is_file():
            hint = f" ({path.parent} is an `mp4sr run` folder: give its finetune/ folder)"
        raise ConfigError(f"checkpoint {path} not found{hint}: give an exported model folder (model.pt), a best.pt "
                          f"file or the run folder that holds one")
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"cannot read the checkpoint ({type(e).__name__}: {reason}): the file is damaged or "
                        f"not an mp4sr model; copy or export it again", path) from None
    if isinstance(payload, dict) and payload.get("kind") == MODEL_KIND:
        check_model_payload(payload, path)
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise DataError(f"not an mp4sr checkpoint (it lacks {missing}); train one with `mp4sr train`", path)
    return payload


def _check_item_index(payload: dict[str, Any], dataset: Dataset, path: Path) -> None:
    base = [str(i) for i in dataset.items.ids]
    added = (payload.get("added_items") or {}).get("ids", [])
    if list(payload["item_ids"]) != base + list(added):
        raise DataError(
            f"the checkpoint's item index ({len(payload['item_ids'])} items) is not that of dataset "
            f"{dataset.name!r} ({len(base)} items) it names: was the dataset changed since training? "
            f"Pass the dataset it was trained on.", path)


def _check_feature_vectors(payload: dict[str, Any], stores: dict[str, Any], path: Path) -> None:
    """The model scores with the vectors it was trained on, or not at all (checkpoints that
    recorded no content hash are taken on trust)."""
    for modality, saved in (payload.get("features") or {}).items():
        store = stores.get(modality)
        if store is None or not saved.get("content_hash") or saved["content_hash"] == store.content_hash:
            continue
        raise DataError(
            f"the {modality} vectors at {store.path} (encoder {store.manifest.get('encoder')!r}) are not those the "
            f"model was trained with (encoder {saved.get('encoder')!r}): rebuild them with the settings of the "
            f"checkpoint's config (`mp4sr features`), or retrain", path)


def _run_config(payload: dict[str, Any], path: Path) -> RunConfig:
    try:
        config = RunConfig(**payload["config"])
    except (TypeError, ValueError, ConfigError) as e:
        raise DataError(f"the checkpoint's config is not valid for this version of mp4sr: {e}", path) from None
    config.train.progress = False
    return config


def _served_dataset(config: RunConfig, dataset: str | Path | Dataset | None) -> tuple[Dataset, list[Dataset] | None]:
    """The data the checkpoint was trained on: its dataset (or ``dataset``, which says where to find it),
    joined with and without the users of the datasets its config names, as in training."""
    from mp4sr.data import training_data

    if isinstance(dataset, Dataset):
        return dataset, None
    try:
        first = load_dataset(dataset or config.dataset, config.data.user_core, config.data.item_core, config.data.columns)
    except DataError as e:
        if dataset is not None:
            raise
        raise DataError(f"{e}. A run folder is served from its dataset; to serve where the dataset is not, "
                        "export the model where it is (`mp4sr export-model --checkpoint RUN --out FOLDER`) "
                        "and serve that folder") from None
    return training_data(config.dataset, config.data, first)


def _rebuild_model(payload: dict[str, Any], config: RunConfig, n_items: int, counts: np.ndarray,
                   features: Mapping[str, Any], path: Path):
    """The checkpoint's model with its weights, reading ``features`` (stores or ItemTables; content models)."""
    name = payload["model_name"]
    context = ModelContext(n_items=n_items, max_len=config.data.max_len, item_counts=counts,
                           features=dict(features) or None)
    # the choices it made from the data when trained (its modalities...), unless its config sets them
    model = build_model(name, {**(payload.get("data_settings") or {}), **config.params}, context)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise DataError(f"the checkpoint's weights do not fit model {name!r} built from its config: {e}", path) from None
    return model


class Recommender:
    """Top-k next items for histories of external item ids. Thread-safe: scoring and adding items
    hold one lock (the model's item tables and caches are shared state)."""

    batch_size = 512  # histories per forward pass, at most
    batch_tokens = 8192  # histories x longest history per forward pass, at most (short ones are not padded to 50)

    def __init__(self, model, item_ids: Sequence[Any], popularity: Any, *, dataset: Dataset | None = None,
                 stores: Mapping[str, Any] | None = None, config: RunConfig | None = None,
                 payload: Mapping[str, Any] | None = None, item_text: Sequence[str] | None = None,
                 users: Users | None = None, manifests: Mapping[str, Mapping[str, Any]] | None = None,
                 device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.item_ids = np.asarray([str(i) for i in item_ids], dtype=object)
        self.index = {item: n for n, item in enumerate(self.item_ids)}
        self.popularity = torch.as_tensor(np.asarray(popularity), dtype=torch.float32)
        self.item_text = list(item_text) if item_text is not None else [""] * len(self.item_ids)
        self.dataset, self.stores, self.config = dataset, dict(stores or {}), config
        self.users = users if users is not None or dataset is None else Users(dataset.user_ids, dataset.sequences)
        # how each modality's vectors were made (the stores' manifests): new items are encoded the same way
        self.manifests = dict(manifests) if manifests is not None else {m: s.manifest for m, s in self.stores.items()}
        self.payload = dict(payload or {})
        self.folder: Path | None = None  # the folder it was loaded from (an exported model's photos are there)
        self.device = torch.device(device)
        self._encoders: dict[str, ModalityEncoder] = {}
        self._added: list[tuple[list[str], list[str], dict[str, ItemTable]]] = []
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, checkpoint: str | Path, dataset: str | Path | Dataset | None = None,
             device: str | torch.device = "cpu") -> "Recommender":
        """The model of an exported model folder (``model.pt``: needs nothing else), or of a run folder's
        ``best.pt``, rebuilt from its stored config with the dataset it was trained on and, for content
        models, that dataset's feature stores; ``dataset`` overrides where that data is found."""
        path = checkpoint_file(checkpoint)
        payload = read_checkpoint(path)
        config = _run_config(payload, path)
        if payload.get("kind") == MODEL_KIND:
            if dataset is not None:
                raise ConfigError(f"{path} is an exported model: it holds its catalogue, so load it without a dataset")
            rec = cls._from_model_file(payload, config, path, device)
        else:
            data, parts = _served_dataset(config, dataset)
            _check_item_index(payload, data, path)
            counts = leave_one_out(data).train_counts()
            stores = _feature_stores(config, data, parts) if reads_content(model_class(payload["model_name"])) else {}
            _check_feature_vectors(payload, stores, path)
            model = _rebuild_model(payload, config, data.n_items, counts, stores, path)
            rec = cls(model.to(device), data.items.ids, counts, dataset=data, stores=stores, config=config,
                      payload=payload, item_text=data.items.text, device=device)
        rec.folder = path.parent
        if payload.get("added_items"):
            rec._restore_added(payload["added_items"])
        return rec

    @classmethod
    def _from_model_file(cls, payload: dict[str, Any], config: RunConfig, path: Path,
                         device: str | torch.device) -> "Recommender":
        content = payload["item_content"]
        tables = {m: ItemTable(c["vectors"].float(), c["mask"].bool()) for m, c in content.items()}
        counts = payload["popularity"].numpy()
        model = _rebuild_model(payload, config, len(payload["item_ids"]), counts, tables, path)
        ids, offsets, items = user_sequences(payload)
        rec = cls(model.to(device), payload["item_ids"], counts, config=config, payload=payload,
                  item_text=payload["item_text"], users=Users(ids, Sequences(offsets, items)),
                  manifests={m: c["manifest"] for m, c in content.items()}, device=device)
        return rec

    # ------------------------------------------------------------------ what it knows

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def max_len(self) -> int:
        return int(self.model.max_len)

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def modalities(self) -> list[str]:
        return list(self.model.modalities) if isinstance(self.model, ContentModel) else []

    @property
    def supports_new_items(self) -> bool:
        return can_add_items(self.model)

    def new_item_fields(self) -> dict[str, list[str]]:
        """Per modality of the model, the fields of a new item (HTTP names) it can read: where the store's
        vectors were imported (no encoder here), the precomputed vector only; {} for ID-only models."""
        if not self.supports_new_items:
            return {}
        content = {"text": "text", "image": "image_base64"}
        out = {}
        for m in self.modalities:
            encoder = self._encoder(m)
            vector = f"{m}_vector ({encoder.dim} numbers)"
            out[m] = [vector] if encoder.mode == "imported" else [content[m], vector]
        return out

    @property
    def n_added(self) -> int:
        return sum(len(ids) for ids, _, _ in self._added)

    def item_display(self) -> ItemDisplay:
        """Titles and photo files of the items, for people to look at (the page): from the catalogue of
        the data the model was trained on, then the text of the items added since."""
        with self._lock:
            if self.dataset is None and "display" in self.payload:  # an exported model
                return ItemDisplay.exported(self.item_ids, self.payload["display"], self.folder, self.item_text)
            catalogue = self.dataset.items if self.dataset is not None else None
            return ItemDisplay.of(self.item_ids, catalogue, self.item_text)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "dataset": self.payload.get("dataset"), "n_items": self.n_items,
                "added_items": self.n_added, "max_len": self.max_len, "supports_new_items": self.supports_new_items,
                "modalities": self.modalities, "new_item_fields": self.new_item_fields()}

    # ------------------------------------------------------------------ recommending

    def recommend(self, history: Sequence[str], k: int = 10, exclude_seen: bool = True,
                  candidates: Sequence[str] | None = None, skip_unknown: bool = False) -> list[tuple[str, float]]:
        """The top ``k`` (item id, score) after ``history`` (oldest first)."""
        return self.rank([history], k, exclude_seen, candidates, skip_unknown)[0].items

    def recommend_batch(self, histories: Sequence[Sequence[str]], k: int = 10, exclude_seen: bool = True,
                        candidates: Sequence[str] | None = None, skip_unknown: bool = False) -> list[list[tuple[str, float]]]:
        """``recommend`` for many histories, scored in batched forward passes."""
        return [r.items for r in self.rank(histories, k, exclude_seen, candidates, skip_unknown)]

    def rank(self, histories: Sequence[Sequence[str]], k: int = 10, exclude_seen: bool = True,
             candidates: Sequence[str] | None = None, skip_unknown: bool = False) -> list[Recommendation]:
        """Recommendations with their details (fallback, skipped ids); see ``recommend``."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        known, skipped = self.resolve(histories, skip_unknown)
        allowed = None if candidates is None else self.resolve([candidates], skip_unknown, "candidates")[0][0]
        out = []
        for start in range(0, len(known), self.batch_size):
            part = known[start : start + self.batch_size]
            out += self.select_top(self.score_indexes(part), part, k, exclude_seen, allowed)
        return [Recommendation(items, None if h else POPULARITY, s) for items, h, s in zip(out, known, skipped)]

    def resolve(self, histories: Sequence[Sequence[str]], skip_unknown: bool = False, what: str = "history",
                skippable: bool = True) -> tuple[list[list[int]], list[list[str]]]:
        """Item indexes of each history and the unknown ids dropped from it (an error unless ``skip_unknown``;
        ``skippable``: whether the caller offers ``skip_unknown``, which the error then suggests)."""
        known, skipped = [], []
        for history in histories:
            if isinstance(history, (str, bytes)):
                raise DataError(f"a {what} is a list of item ids, not one string: {history!r:.80}")
            ids = [str(item) for item in history]
            known.append([self.index[i] for i in ids if i in self.index])
            skipped.append([i for i in ids if i not in self.index])
        unknown = [i for ids in skipped for i in ids]
        if unknown and not skip_unknown:
            raise UnknownItemsError(unknown, self.n_items, what, skippable)
        return known, skipped

    def score_indexes(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """[B, n_items] scores after each history of item indexes."""
        lengths = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))
        values = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if lengths.sum() else np.zeros(1, np.int64)
        end = np.cumsum(lengths)
        return self.score_windows(torch.from_numpy(values), end - lengths, end)

    @torch.no_grad()  # not inference_mode: callers mask the scores in place
    def score_windows(self, values: torch.Tensor, start: np.ndarray, end: np.ndarray) -> torch.Tensor:
        """[B, n_items] scores after the histories ``values[start[b]:end[b]]``: the model's on their last
        ``max_len`` items (as the offline evaluation batches them), popularity where a history is empty."""
        start = np.maximum(start, end - self.max_len)
        rows = np.flatnonzero(end > start)
        rows = rows[np.argsort(end[rows] - start[rows], kind="stable")]  # similar lengths share a batch
        with self._lock:  # the scores stay on the model's device: select_top ranks them there
            out = self.popularity.to(self.device).expand(len(start), -1).clone()
            for part in length_chunks(end[rows] - start[rows], self.batch_size, self.batch_tokens):
                chunk = rows[part]
                s, e, idx = (torch.from_numpy(a[chunk]) for a in (start, end, np.arange(len(start))))
                tokens, _ = gather_windows(values, s, e)
                batch = SequenceBatch(tokens, e - s, idx).to(self.device)
                out[idx.to(self.device)] = self.model.full_sort_predict(batch).float()
        return out

    def select_top(self, scores: torch.Tensor, histories: Sequence[Sequence[int]], k: int | Sequence[int],
                   exclude_seen: bool | Sequence[bool] = True,
                   candidates: Sequence[int] | None = None) -> list[list[tuple[str, float]]]:
        """The top-k (id, score) of each row of ``scores`` (changed in place), without the items of its
        history when ``exclude_seen``, among ``candidates`` (item indexes) when given. ``k`` and
        ``exclude_seen`` may be given per row (one top-k pass serves rows that ask for different k)."""
        n = len(histories)
        ks = np.broadcast_to(np.asarray(k, dtype=np.int64), (n,))
        exclude = np.broadcast_to(np.asarray(exclude_seen, dtype=bool), (n,))
        masked = [r for r in range(n) if exclude[r] and len(histories[r])]
        if masked:
            rows = np.repeat(masked, [len(histories[r]) for r in masked])
            scores[rows, np.concatenate([np.asarray(histories[r], dtype=np.int64) for r in masked])] = -torch.inf
        if candidates is not None:
            allowed = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
            allowed[torch.as_tensor(list(candidates), dtype=torch.long)] = True
            scores.masked_fill_(~allowed, -torch.inf)
        top, idx = (t.cpu() for t in topk_items(scores, int(ks.max(initial=1))))  # only the top k leave the device
        ids = self.item_ids[idx.numpy()]
        return [[(i, s) for i, s in zip(row_ids[:row_k], row_scores[:row_k]) if s != -np.inf]
                for row_k, row_ids, row_scores in zip(ks.tolist(), ids.tolist(), top.tolist())]

    # ------------------------------------------------------------------ new items

    def add_items(self, items: Sequence[NewItem | Mapping[str, Any]]) -> list[str]:
        """Add items without retraining (content models): each ``{id, text?, image?|image_path?,
        text_vector?, image_vector?}`` is encoded like the model's feature stores and scored from its
        content alone (new items have no ID embedding). Returns the ids added."""
        if not self.supports_new_items:
            able = ", ".join(sorted(name for name, cls in REGISTRY.items() if can_add_items(cls)))
            raise UnsupportedError(
                f"model {self.model_name!r} scores items by ID embeddings learned in training, so it cannot score "
                f"items it was not trained on. Use a content model that can ({able}) to add items without retraining.")
        new = [NewItem.parse(item) for item in items]
        ids = [item.id for item in new]
        clash = [i for i in ids if i in self.index] + [i for i, n in Counter(ids).items() if n > 1]
        if clash:
            raise DuplicateItemsError(clash)
        empty = [i.id for i in new if not any(i.has_content(m) or i.vector(m) is not None for m in self.modalities)]
        if empty:
            raise DataError(f"new item(s) {empty[:10]} have no content: give text, an image or precomputed vectors "
                            f"for at least one of the model's modalities {self.modalities}")
        tables = {m: self._encoder(m).encode(new) for m in self.modalities}
        self._append(ids, [item.text or "" for item in new], tables)
        return ids

    def _encoder(self, modality: str) -> ModalityEncoder:
        if modality not in self._encoders:
            table = self.model.tables[modality]
            manifest = self.manifests.get(modality) or {"mode": "imported", "encoder": "unknown"}
            features = self.config.features if self.config is not None else None
            self._encoders[modality] = ModalityEncoder(modality, manifest, table.vectors.shape[1],
                                                       table.vectors.shape[2], features)
        return self._encoders[modality]

    def _append(self, ids: list[str], texts: list[str], tables: dict[str, ItemTable]) -> None:
        with self._lock:
            if any(i in self.index for i in ids):  # added meanwhile by another thread
                raise DuplicateItemsError([i for i in ids if i in self.index])
            old = self.model.tables
            self.model.set_item_tables({
                m: ItemTable(torch.cat([old[m].vectors, t.vectors.to(old[m].vectors)]),
                             torch.cat([old[m].mask, t.mask.to(old[m].mask.device)]))
                for m, t in tables.items()})
            first = len(self.item_ids)
            self.item_ids = np.concatenate([self.item_ids, np.asarray(ids, dtype=object)])
            self.index.update({item: first + n for n, item in enumerate(ids)})
            self.popularity = torch.cat([self.popularity, torch.zeros(len(ids))])  # no interactions yet
            self.item_text += texts
            self._added.append((list(ids), list(texts), tables))

    def _restore_added(self, added: Mapping[str, Any]) -> None:
        tables = {m: ItemTable(t["vectors"].float(), t["mask"].bool()) for m, t in added["tables"].items()}
        missing = set(self.modalities) - set(tables)
        if missing:
            raise DataError(f"the checkpoint's added items lack {sorted(missing)} vectors")
        self._append(list(added["ids"]), list(added.get("text") or [""] * len(added["ids"])), tables)

    # ------------------------------------------------------------------ saving

    def save(self, path: str | Path) -> Path:
        """Write the model with the extended catalogue (a folder -> ``folder/best.pt``, or ``folder/model.pt``
        for an exported model; or a ``.pt`` file) and ``items.csv`` beside it; ``Recommender.load`` of it
        restores the added items."""
        exported = self.payload.get("kind") == MODEL_KIND
        path = Path(path)
        file = path if path.suffix == ".pt" else path / (MODEL_FILE if exported else "best.pt")
        file.parent.mkdir(parents=True, exist_ok=True)
        payload = {**self.payload, "state_dict": self.model.state_dict()}
        if not exported:  # a model file's item_ids, text, content and popularity are those of its base catalogue
            payload["item_ids"] = [str(i) for i in self.item_ids]
        payload.pop("added_items", None)
        if self._added:
            payload["added_items"] = self._added_payload()
        atomic_save(sealed(payload) if exported else payload, file)
        n_base = self.n_items - self.n_added
        pd.DataFrame({"item_id": self.item_ids, "added": np.arange(self.n_items) >= n_base,
                      "text": self.item_text}).to_csv(file.parent / "items.csv", index=False)
        return file

    def _added_payload(self) -> dict[str, Any]:
        modalities = self._added[0][2].keys()
        return {
            "ids": [i for ids, _, _ in self._added for i in ids],
            "text": [t for _, texts, _ in self._added for t in texts],
            "tables": {m: {"vectors": torch.cat([t[m].vectors for _, _, t in self._added]).cpu(),
                           "mask": torch.cat([t[m].mask for _, _, t in self._added]).cpu()} for m in modalities},
        }


def length_chunks(lengths: np.ndarray, max_rows: int, max_tokens: int) -> list[slice]:
    """Consecutive slices of ascending ``lengths``, each of at most ``max_rows`` rows and at most
    ``max_tokens`` rows x its longest length: padding stays small when a few histories are long."""
    chunks, first = [], 0
    for n in range(1, len(lengths)):
        if n - first >= max_rows or (n + 1 - first) * lengths[n] > max_tokens:
            chunks.append(slice(first, n))
            first = n
    if len(lengths):
        chunks.append(slice(first, len(lengths)))
    return chunks


def _feature_stores(config: RunConfig, dataset: Dataset, parts: list[Dataset] | None = None) -> dict[str, Any]:
    from mp4sr.features import dataset_features

    return dataset_features(config.features, dataset, parts, progress=config.train.progress)
