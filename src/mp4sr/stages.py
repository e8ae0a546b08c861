"""Which stage of a pre-trained model each setting reaches, and where `mp4sr run` sends an override.

A pre-trainable model declares the settings only one stage reads with field metadata (``PRETRAINING`` /
``FINETUNING`` in ``mp4sr.models.base``) and each stage's settings in its class's ``stage_defaults``;
the training schedule of a stage is the keys its stage defaults set. Under `mp4sr run`:

- ``--pretrain-set`` reaches pre-training only, and wins there over ``--set``;
- ``--set`` reaches fine-tuning, and pre-training too unless the key is part of a stage's schedule
  (``train.lr``, ``train.epochs``, ...): the data, features and eval sections, the other train
  settings and the model settings both stages read;
- a setting only the other stage reads is refused, naming the option that reaches its stage;
- ``data.join_datasets`` / ``data.exclude_users_of`` describe the pre-training source: given with
  ``--set`` they go to pre-training only when ``--pretrain-dataset`` is given (transfer), and are
  refused otherwise (fine-tuning on a join would change the test set);
- ``params.stage`` is the command's to choose.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mp4sr.config import RunConfig, build_config, parse_overrides
from mp4sr.errors import ConfigError

if TYPE_CHECKING:
    from mp4sr.models.base import Stage

STAGE_NAMES: dict[Stage, str] = {"pretrain": "pre-training", "finetune": "fine-tuning"}
SOURCE_KEYS = ("data.join_datasets", "data.exclude_users_of")  # the pre-training source of a transfer run
COMMAND_KEY = "params.stage"


def leaf_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys += leaf_keys(value, dotted + ".") if isinstance(value, dict) and value else [dotted]
    return keys


def stage_defaults(model: str, stage: Stage) -> dict[str, Any]:
    """The settings a pre-trainable model gives its ``stage`` (its class's ``stage_defaults``, a copy);
    {} for a model without stages."""
    from mp4sr.models.base import is_pretrainable, model_class

    return copy.deepcopy(model_class(model).stage_defaults[stage]) if is_pretrainable(model) else {}


def stage_base(model: str, stage: Stage) -> dict[str, Any]:
    """What `mp4sr pretrain` / `finetune` start from: the model and its stage defaults; refuses a model
    without a pre-training stage."""
    from mp4sr.models.base import is_pretrainable

    if not is_pretrainable(model):
        raise ConfigError(f"model {model!r} has no pre-training stage: train it with `mp4sr train --model {model}`")
    return {"model": model, **stage_defaults(model, stage)}


def stage_config(stage: Stage, file: str | Path | None, overrides: list[str] | None, **explicit: Any) -> RunConfig:
    """The config of one stage of `mp4sr pretrain` / `finetune` / `run`: the stage defaults of its model <
    ``file`` < ``overrides`` < ``explicit``. The model is the file's or the overrides' (by default the
    default pre-trainable model), so it is read first and its stage defaults then go under them."""
    from mp4sr.models import DEFAULT_PRETRAINABLE

    model = build_config(RunConfig, file, overrides, base={"model": DEFAULT_PRETRAINABLE}, **explicit).model
    return build_config(RunConfig, file, overrides, base=stage_base(model, stage), **explicit)


def schedule_keys(model: str) -> list[str]:
    """The keys the stage defaults of ``model`` set (each stage's own training schedule), but its stage."""
    keys = set(leaf_keys(stage_defaults(model, "pretrain"))) | set(leaf_keys(stage_defaults(model, "finetune")))
    return sorted(keys - {COMMAND_KEY})


def stage_only(model: str, key: str) -> Stage | None:
    """'pretrain' or 'finetune' when only that stage reads ``key`` (a model setting it declares so)."""
    from mp4sr.models import model_class
    from mp4sr.models.base import setting_stage

    section, _, name = key.partition(".")
    if section != "params" or not name:
        return None
    return setting_stage(model_class(model).Config, name.split(".")[0])


def _keys(pair: str) -> list[str]:
    """The dotted leaf keys of one ``key=value`` override (``params={a: 1}`` -> ``params.a``)."""
    return leaf_keys(parse_overrides([pair]))


def check_overrides(model: str, stage: Stage, overrides: list[str] | None, command: str) -> None:
    """Refuse overrides of `mp4sr pretrain` / `finetune` that only the other stage reads."""
    other: Stage = "finetune" if stage == "pretrain" else "pretrain"
    for pair in overrides or []:
        for key in _keys(pair):
            if key == COMMAND_KEY:
                raise ConfigError(f"--set {pair}: the stage is chosen by the command (`mp4sr pretrain`, `finetune`)")
            if stage_only(model, key) == other:
                raise ConfigError(f"--set {pair}: {key} is a {STAGE_NAMES[other]} setting of {model}, which {command} "
                                  f"would ignore; give it to `mp4sr {other}` (or to `mp4sr run`)")


def route_run_overrides(model: str, set_: list[str] | None, pretrain_set: list[str] | None,
                        transfer: bool) -> tuple[list[str], list[str]]:
    """(pre-training overrides, fine-tuning overrides) of `mp4sr run` (rules in the module docstring);
    ``transfer``: pre-training has its own dataset (``--pretrain-dataset``)."""
    pre, fine = [], []
    schedule = set(schedule_keys(model))
    for pair in set_ or []:
        places = {_place(model, key, pair, schedule, transfer) for key in _keys(pair)}
        if len(places) > 1:
            raise ConfigError(f"--set {pair}: its keys reach different stages; give them one by one")
        place = places.pop()
        if place in {"both", "pretrain"}:
            pre.append(pair)
        if place in {"both", "finetune"}:
            fine.append(pair)
    for pair in pretrain_set or []:
        for key in _keys(pair):
            if key == COMMAND_KEY:
                raise ConfigError(f"--pretrain-set {pair}: the stage is chosen by the command")
            if stage_only(model, key) == "finetune":
                raise ConfigError(f"--pretrain-set {pair}: {key} is a fine-tuning setting of {model}, which "
                                  f"pre-training would ignore; give it with --set {pair}")
    return pre + list(pretrain_set or []), fine


def _place(model: str, key: str, pair: str, schedule: set[str], transfer: bool) -> Stage | Literal["both"]:
    """Where `--set` sends one key under `mp4sr run`: 'both', 'pretrain' or 'finetune'."""
    if key == COMMAND_KEY:
        raise ConfigError(f"--set {pair}: the stage is chosen by the command")
    if key in SOURCE_KEYS:
        if not transfer:
            raise ConfigError(
                f"--set {pair}: {key} describes the pre-training source, and without --pretrain-dataset it would "
                f"also change the fine-tuning (and test) set. Give --pretrain-dataset A to pre-train on A "
                f"(--set {key} then applies to pre-training only), or --pretrain-set {pair} to pre-train on this "
                f"dataset with it")
        return "pretrain"
    only = stage_only(model, key)
    if only == "pretrain":
        raise ConfigError(f"--set {pair}: {key} is a pre-training setting of {model}, which fine-tuning would "
                          f"ignore; give it with --pretrain-set {pair}")
    return "finetune" if only == "finetune" or key in schedule else "both"
