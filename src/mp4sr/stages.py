"""Which stage of a pre-trained model each setting reaches, and where `mp4sr run` sends an override.

A model declares the settings only one stage reads with field metadata (``PRETRAINING`` /
``FINETUNING`` in ``mp4sr.models.base``); the training schedule of each stage is the keys its stage
defaults set (``PRETRAIN_DEFAULTS`` / ``FINETUNE_DEFAULTS``). Under `mp4sr run`:

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

from typing import Any

from mp4sr.config import FINETUNE_DEFAULTS, PRETRAIN_DEFAULTS, parse_overrides
from mp4sr.errors import ConfigError

STAGE_NAMES = {"pretrain": "pre-training", "finetune": "fine-tuning"}
SOURCE_KEYS = ("data.join_datasets", "data.exclude_users_of")  # the pre-training source of a transfer run
COMMAND_KEY = "params.stage"


def leaf_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys += leaf_keys(value, dotted + ".") if isinstance(value, dict) and value else [dotted]
    return keys


def schedule_keys() -> list[str]:
    """The keys the stage defaults set (each stage's own training schedule), but the model and its stage."""
    keys = set(leaf_keys(PRETRAIN_DEFAULTS)) | set(leaf_keys(FINETUNE_DEFAULTS))
    return sorted(keys - {"model", COMMAND_KEY})


def stage_only(model: str, key: str) -> str | None:
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


def check_overrides(model: str, stage: str, overrides: list[str] | None, command: str) -> None:
    """Refuse overrides of `mp4sr pretrain` / `finetune` that only the other stage reads."""
    other = "finetune" if stage == "pretrain" else "pretrain"
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
    schedule = set(schedule_keys())
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


def _place(model: str, key: str, pair: str, schedule: set[str], transfer: bool) -> str:
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
