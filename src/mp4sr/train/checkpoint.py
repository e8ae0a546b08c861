"""Checkpoints: atomic writes, every random state, and the checks that a checkpoint fits the data.

Two files per run folder:

- ``best.pt``: the weights of the best validation epoch, with the config, the item index and the
  feature manifest (what evaluation and serving need);
- ``last.pt``: everything to continue training exactly where it stopped: weights, optimiser, every
  RNG state, epoch and step, best metric and epoch, the early-stopping counter, the history, and —
  when written in the middle of an epoch — the epoch's batch order and how many batches were done.

Everything is stored as tensors, numbers, strings, lists and dicts, so that ``torch.load(...,
weights_only=True)`` (the only way mp4sr loads checkpoints) can read it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mp4sr.files import CheckpointError, atomic_save, fsync_dir  # noqa: F401  (they were defined here)

CHECKPOINT_FORMAT = 1
# Settings that may change between a run and its resumption without changing what is computed
# (more epochs or patience extend a run; the rest are where and how fast it runs).
RESUMABLE_CHANGES = frozenset(
    {"train.epochs", "train.patience", "train.progress", "train.threads", "train.device", "train.eval_batch_size",
     "train.precision", "train.tensorboard"}
)


class CheckpointMismatch(CheckpointError):
    """A checkpoint does not fit the data, features, model or config it is used with."""


# --------------------------------------------------------------------------- writing and reading


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file (or the ``best.pt`` of a run folder), read with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a checkpoint, pickled objects weights_only refuses...
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "it is damaged or not an mp4sr checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not an mp4sr checkpoint (no weights in it)")
    return ckpt


# --------------------------------------------------------------------------- random states


def _plain(value: Any) -> Any:
    """numpy arrays and scalars inside a bit generator's state -> lists and Python numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def capture_rng(generator: np.random.Generator | None = None) -> dict[str, Any]:
    """Every random state a training step may draw from: Python's ``random``, numpy's global state and
    ``generator`` (the batch shuffler), torch's CPU generator (dropout, mixup...) and CUDA's."""
    version, internal, gauss_next = random.getstate()
    _, key, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy_global": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                         "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "numpy": None if generator is None else _plain(generator.bit_generator.state),
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: Mapping[str, Any], generator: np.random.Generator | None = None) -> None:
    """Put back what ``capture_rng`` saved (``generator`` must use the same bit generator)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss_next"]))
    g = state["numpy_global"]
    np.random.set_state(("MT19937", g["key"].numpy().astype(np.uint32), g["pos"], g["has_gauss"], g["cached_gaussian"]))
    if generator is not None and state.get("numpy") is not None:
        saved = state["numpy"]
        if saved["bit_generator"] != type(generator.bit_generator).__name__:
            raise CheckpointMismatch(
                f"the checkpoint's batch shuffler is {saved['bit_generator']}, this run's is "
                f"{type(generator.bit_generator).__name__}: resume with the same mp4sr version"
            )
        generator.bit_generator.state = saved
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------- does it fit the data?


def feature_manifest(stores: Mapping[str, Any] | None) -> dict[str, dict[str, Any]] | None:
    """What a checkpoint records of each FeatureStore it was trained with (from the stores' manifests)."""
    if stores is None:
        return None
    keys = ("encoder", "mode", "input_hash", "item_ids_hash", "shape", "dtype")
    return {str(m): {**{k: s.manifest.get(k) for k in keys}, "content_hash": getattr(s, "content_hash", None)}
            for m, s in stores.items() if s is not None}


def _first_difference(a: Sequence[str], b: Sequence[str]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_item_index(ckpt: Mapping[str, Any], item_ids: Sequence[Any], where: str | Path) -> None:
    saved = ckpt.get("item_ids")
    if saved is None:
        return
    given = [str(i) for i in item_ids]
    data = f" ({ckpt['dataset']})" if ckpt.get("dataset") else ""
    if len(saved) != len(given):
        raise CheckpointMismatch(
            f"{where}: the checkpoint was trained on {len(saved)} items{data}, the dataset has {len(given)}: "
            "use the same dataset, or retrain"
        )
    if list(saved) != given:
        i = _first_difference(saved, given)
        raise CheckpointMismatch(
            f"{where}: the item index differs from the checkpoint's: item {i} is {saved[i]!r} in the checkpoint{data} "
            f"but {given[i]!r} in the dataset: use the same dataset (same files and filtering), or retrain"
        )


def check_features(ckpt: Mapping[str, Any], features: Mapping[str, Mapping[str, Any]], where: str | Path) -> None:
    saved = ckpt.get("features")
    if saved is None:
        return
    for modality in sorted(set(saved) | set(features)):
        old, new = saved.get(modality), features.get(modality)
        if new is None:
            raise CheckpointMismatch(
                f"{where}: the checkpoint was trained with {modality} features (encoder {old.get('encoder')!r}) "
                f"that this run does not have: compute them (`mp4sr features`) with that encoder, or retrain"
            )
        if old is None:
            raise CheckpointMismatch(
                f"{where}: this run uses {modality} features (encoder {new.get('encoder')!r}) but the checkpoint "
                f"was trained without them: use the checkpoint's feature settings, or retrain"
            )
        # The vectors decide: the same vectors rebuilt elsewhere (copied data, new file times) still fit.
        # A checkpoint from before stores recorded them is held to the hash of the inputs.
        both = old.get("content_hash") and new.get("content_hash")
        vectors = ("content_hash", "vectors") if both else ("input_hash", "inputs")
        for key, what in (("item_ids_hash", "item index"), vectors, ("shape", "shape")):
            if old.get(key) != new.get(key):
                show = (lambda v: str(v)[:12]) if key.endswith("hash") else str
                raise CheckpointMismatch(
                    f"{where}: the {modality} features differ from the checkpoint's in their {what} "
                    f"(checkpoint: encoder {old.get('encoder')!r}, {key} {show(old.get(key))}; this run: encoder "
                    f"{new.get('encoder')!r}, {key} {show(new.get(key))}): rebuild the features the checkpoint was "
                    f"trained with (`mp4sr features` with the same encoder and data), or retrain"
                )


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_config(ckpt: Mapping[str, Any], config: Mapping[str, Any], where: str | Path) -> None:
    """A run resumes only under the config it started with (except ``RESUMABLE_CHANGES``)."""
    saved = ckpt.get("config")
    if saved is None:
        return
    from mp4sr.config import RunConfig

    old, new = _flatten(saved), _flatten(config)
    defaults = _flatten(RunConfig().model_dump(mode="json"))  # a setting added since the run began, at its default
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
                     and not (k not in old and k in defaults and new[k] == defaults[k]))
    if changed:
        shown = "; ".join(f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in changed[:5])
        raise CheckpointMismatch(
            f"{where}: the run was started with other settings ({shown}): resume with the run's own settings "
            "(its config.yaml), or start a new output folder"
        )


def check_compatible(
    ckpt: Mapping[str, Any],
    where: str | Path,
    item_ids: Sequence[Any] | None = None,
    features: Mapping[str, Mapping[str, Any]] | None = None,
    model_name: str | None = None,
) -> None:
    """Refuse a checkpoint trained on another item index, other features or another model."""
    if model_name is not None and ckpt.get("model_name") not in (None, model_name):
        raise CheckpointMismatch(
            f"{where}: the checkpoint holds a {ckpt['model_name']!r} model, not {model_name!r}: "
            "use the same model, or another folder"
        )
    if item_ids is not None:
        check_item_index(ckpt, item_ids, where)
    if features is not None:
        check_features(ckpt, features, where)
