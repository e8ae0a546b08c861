"""Which item modalities a content model reads: those its settings name, else those the data has.

Catalogues come with item text and no images (the most common), images and no text, or both. A
content model whose ``params.modalities`` is unset reads every modality it can that the dataset has
(and says so when that is not all of them); naming a modality the dataset lacks, or a dataset with
none that the model can read, is an error that says what can still train on it.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from mp4sr.errors import ConfigError
from mp4sr.models.base import REGISTRY, ModelContext, reads_content

log = logging.getLogger("mp4sr.models")

MODALITIES = ("text", "image")


def id_only_models() -> list[str]:
    """The registered models that learn from interactions alone, without item content."""
    return sorted(name for name, cls in REGISTRY.items() if not reads_content(cls))


def dataset_name(context: ModelContext) -> str:
    return f"dataset {context.dataset!r}" if context.dataset else "the dataset"


def _has(modalities: Sequence[str]) -> str:
    return f"it has {' and '.join(modalities)} features only" if modalities else "it has neither item text nor images"


def choose_modalities(model: str, requested: Sequence[str] | None, features: Mapping[str, Any] | None,
                      dataset: str, readable: Sequence[str] = MODALITIES) -> list[str]:
    """The modalities ``model`` reads: ``requested`` (``params.modalities``), each of which must be among
    ``features`` (the dataset's feature stores), or, when None, those of ``readable`` that the dataset has."""
    present = [m for m in MODALITIES if (features or {}).get(m) is not None]
    if requested is None:
        chosen = [m for m in readable if m in present]
        if not chosen:
            raise ConfigError(
                f"{model} reads item {' or '.join(readable)} features, and {dataset} has none ({_has(present)}). "
                f"Models that learn from the interactions alone can train on it: {', '.join(id_only_models())} "
                f"(`mp4sr train --model NAME`)")
        absent = [m for m in readable if m not in chosen]
        if absent:
            log.info("%s has no %s features: %s runs on %s only", dataset, " or ".join(absent), model, " and ".join(chosen))
        return chosen
    if not requested:
        raise ConfigError(f"{model} needs at least one modality in params.modalities (or leave it unset: what the data has)")
    requested = list(dict.fromkeys(requested))
    missing = [m for m in requested if m not in present]
    if missing:
        raise ConfigError(
            f"{model}: params.modalities asks for {' and '.join(missing)}, and {dataset} has no {' or '.join(missing)} "
            f"features ({_has(present)}): leave params.modalities unset to use what the data has"
            + (f", or train a model without item content: {', '.join(id_only_models())}" if not present else ""))
    return requested
