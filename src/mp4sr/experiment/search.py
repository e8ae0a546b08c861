"""Search spaces of a hyper-parameter search (what ``mp4sr tune`` and experiment entries' ``search`` hold).

A space maps dotted settings to one distribution each::

    trials: 20                                  # the budget: finished (completed or pruned) trials
    space:
      train.lr: {log_uniform: [1.0e-4, 1.0e-2]}
      train.weight_decay: {choice: [0.0, 1.0e-4, 1.0e-3]}
      params.hidden: {choice: [64, 128, 256]}
      params.dropout: {uniform: [0.1, 0.5]}
      params.layers: {int: [1, 3]}

Distributions: ``uniform`` / ``log_uniform`` [low, high] (floats), ``int`` / ``log_int`` [low, high]
(integers, both ends included) and ``choice`` [values...] (any YAML values, lists included).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mp4sr.config import deep_merge, read_yaml
from mp4sr.errors import ConfigError

Kind = Literal["uniform", "log_uniform", "int", "log_int", "choice"]
Integers = tuple[int, int]  # named outside Dimension, whose field ``int`` hides the builtin there


class Dimension(BaseModel):
    """One setting's distribution: exactly one of the fields."""

    model_config = ConfigDict(extra="forbid")

    uniform: tuple[float, float] | None = None
    log_uniform: tuple[float, float] | None = None
    int: Integers | None = None
    log_int: Integers | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> "Dimension":
        given = [k for k in Kind.__args__ if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(Kind.__args__)}, e.g. {{log_uniform: [1.0e-4, 1.0e-2]}}")
        if self.kind == "choice":
            if not self.choice:
                raise ValueError("choice needs at least one value")
        else:
            low, high = getattr(self, self.kind)
            if not low <= high or (self.kind.startswith("log") and low <= 0):
                raise ValueError(f"{self.kind} needs low <= high{' and low > 0' if self.kind.startswith('log') else ''}")
        return self

    @property
    def kind(self) -> Kind:
        return next(k for k in Kind.__args__ if getattr(self, k) is not None)

    def first(self) -> Any:
        """A value of the space (its low end, or its first choice): to check a setting before a search."""
        return self.choice[0] if self.kind == "choice" else getattr(self, self.kind)[0]

    def suggest(self, trial, name: str) -> Any:
        """The value an Optuna trial draws for setting ``name``."""
        kind = self.kind
        if kind == "choice":
            if all(v is None or isinstance(v, (bool, int, float, str)) for v in self.choice):
                return trial.suggest_categorical(name, self.choice)
            texts = [json.dumps(v) for v in self.choice]  # lists and mappings travel as their JSON text
            return json.loads(trial.suggest_categorical(name, texts))
        low, high = getattr(self, kind)
        if kind in ("int", "log_int"):
            return trial.suggest_int(name, low, high, log=kind == "log_int")
        return trial.suggest_float(name, low, high, log=kind == "log_uniform")


class SearchSpec(BaseModel):
    """A search: its space, its budget and how trials are drawn and pruned."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(20, ge=1, description="finished trials (completed or pruned) the search runs to")
    space: dict[str, Dimension] = Field(default_factory=dict, description="dotted setting -> distribution")
    seed: int = Field(0, description="seed of the sampler (trial k draws from seed + k)")
    startup_trials: int = Field(10, ge=0, description="random trials before TPE models the results")
    pruner: Literal["median", "none"] = Field(
        "median", description="'median': stop a trial whose validation metric at an epoch is below the median "
        "of the finished trials' at that epoch")
    prune_startup: int = Field(3, ge=0, description="finished trials before any trial is pruned")
    prune_warmup: int = Field(5, ge=0, description="epochs every trial trains before it can be pruned")

    @field_validator("space")
    @classmethod
    def _dotted(cls, space: dict[str, Dimension]) -> dict[str, Dimension]:
        for key in space:
            if "." not in key or key.split(".")[0] not in {"params", "train", "data", "eval", "features"}:
                raise ValueError(f"{key!r} is not a dotted setting such as train.lr or params.hidden")
        return space


def parse_search(tree: Any, where: str) -> SearchSpec:
    """A search from its YAML tree: {trials, space, ...}, or a bare space (dotted settings)."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: a search is a mapping such as {{trials: 20, space: {{train.lr: {{log_uniform: [1.0e-4, 1.0e-2]}}}}}}")
    try:
        return SearchSpec(**(tree if "space" in tree or not tree else {"space": tree}))
    except ValidationError as e:
        raise ConfigError(f"{where}: invalid search:\n{e}") from None


def load_search(path: str | Path, **explicit: Any) -> SearchSpec:
    """The search of a YAML file; ``explicit`` values (not None) replace the file's (``trials=50``)."""
    search = parse_search(read_yaml(path), str(path))
    return search.model_copy(update={k: v for k, v in explicit.items() if v is not None})


def point_tree(point: dict[str, Any]) -> dict[str, Any]:
    """{"train.lr": 1e-3} -> {"train": {"lr": 1e-3}}."""
    tree: dict[str, Any] = {}
    for key, value in point.items():
        node: Any = value
        for part in reversed(key.split(".")):
            node = {part: node}
        tree = deep_merge(tree, node)
    return tree


def point_label(point: dict[str, Any]) -> str:
    """"train.lr=0.001,params.hidden=64": floats to 4 significant digits (a searched 0.0012520653814999472
    reads 0.001252)."""
    return ",".join(f"{k}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in point.items())
