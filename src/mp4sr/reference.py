"""The settings reference, made from the typed config and each model's ``Config`` at run time:
`mp4sr config --show` prints it and docs/settings.md is its Markdown form (a test keeps the two equal)."""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from mp4sr.config import RunConfig
from mp4sr.stages import SOURCE_KEYS, STAGE_NAMES, leaf_keys, schedule_keys, stage_base

REGENERATE = "mp4sr config --show --markdown > docs/settings.md"


@dataclass
class Setting:
    key: str
    type: str
    default: str
    description: str
    stage: str = ""  # 'pre-training' / 'fine-tuning' for model settings only one stage reads


def type_name(annotation: Any) -> str:
    """``int``, ``str | null``, ``list[int]``, ``'sequence' | 'prefix'``..."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]"
    if origin is dict:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field) -> str:
    marks = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    found = [f"{sign} {getattr(m, name)}" for m in field.metadata for name, sign in marks.items() if hasattr(m, name)]
    return f" ({', '.join(found)})" if found else ""


def settings_of(config: type[BaseModel], prefix: str = "", stages: bool = False) -> list[Setting]:
    """Every leaf setting of ``config`` (nested sections flattened to dotted keys)."""
    from mp4sr.models.base import setting_stage

    rows = []
    for name, field in config.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            rows += settings_of(field.annotation, f"{prefix}{name}.")
            continue
        if name == "params" and config is RunConfig:
            continue  # the model's settings, listed per model
        default = field.get_default(call_default_factory=True)
        stage = setting_stage(config, name) if stages else None
        rows.append(Setting(f"{prefix}{name}", type_name(field.annotation) + _bounds(field),
                            json.dumps(default, ensure_ascii=False), field.description or "",
                            STAGE_NAMES.get(stage or "", "")))
    return rows


def model_settings(name: str) -> list[Setting]:
    from mp4sr.models import model_class

    config = model_class(name).Config
    return settings_of(config, "params.", stages="stage" in config.model_fields)  # single-stage models: no column


def _model_names(model: str | None) -> list[str]:
    from mp4sr.models import REGISTRY, model_class

    return [model_class(model).name] if model else sorted(REGISTRY)


def text(model: str | None = None) -> str:
    """Plain-text reference: the run settings, then the settings of ``model`` (every model when None)."""
    from mp4sr.models import model_class

    def block(title: str, rows: list[Setting]) -> list[str]:
        if not rows:
            return [title, "  (no settings)", ""]
        width = max(len(r.key) for r in rows)
        out = [title]
        for r in rows:
            stage = f" [{r.stage} only]" if r.stage else ""
            out.append(f"  {r.key:<{width}}  {r.type} = {r.default}{stage}")
            out += [f"  {'':<{width}}  {r.description}"] if r.description else []
        return out + [""]

    lines = block("run settings (--config FILE, --set key=value)", settings_of(RunConfig))
    for name in _model_names(model):
        lines += block(f"model {name}: {_summary(model_class(name))}", model_settings(name))
    return "\n".join(lines).rstrip() + "\n"


def _summary(cls) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("<", "&lt;") if value else ""


def _table(rows: list[Setting], with_stage: bool) -> list[str]:
    head = ["key", "type", "default", *(["stage"] if with_stage else []), "description"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r.key}`", _cell(r.type), f"`{r.default}`", *([r.stage] if with_stage else []), _cell(r.description)]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _defaults_line(tree: dict[str, Any]) -> str:
    def value(key: str) -> Any:
        node = tree
        for part in key.split("."):
            node = node[part]
        return node

    return ", ".join(f"`{key}={json.dumps(value(key))}`" for key in leaf_keys(tree) if key != "model")


def markdown(model: str | None = None) -> str:
    """docs/settings.md: how settings combine, every run setting, the stages, every model's settings."""
    from mp4sr.models import DEFAULT_PRETRAINABLE, model_class
    from mp4sr.models.base import can_add_items, is_pretrainable, reads_content

    names = _model_names(model)
    staged = DEFAULT_PRETRAINABLE  # the model of `mp4sr pretrain` / `finetune` / `run` unless a file names another
    lines = [
        "# Settings reference",
        "",
        f"<!-- Generated from the code by `{REGENERATE}`; a test keeps this page equal to it. -->",
        "",
        "Settings come from defaults < the stage defaults of `mp4sr pretrain` / `finetune` / `run` < "
        "`--config FILE.yaml` < `--set key=value` < explicit options (`--model`, `--dataset`, `--from`). A file "
        "holds the same keys nested (`configs/run/mp4sr-example.yaml`; a run's `config.yaml` is such a file); "
        "`--set` takes dotted keys and YAML values (`--set 'eval.ks=[10,20]'`). Unknown keys are errors. "
        "`mp4sr config --show [--model NAME]` prints this reference.",
        "",
        "## Run settings",
        "",
        *_table(settings_of(RunConfig), with_stage=False),
        "",
        "## Stages of `mp4sr run`",
        "",
        f"`mp4sr pretrain` and the pre-training stage of `mp4sr run` start from "
        f"{_defaults_line(stage_base(staged, 'pretrain'))}; "
        f"`mp4sr finetune` and the fine-tuning stage from {_defaults_line(stage_base(staged, 'finetune'))}.",
        "",
        "- `--config FILE` applies to both stages.",
        "- `--pretrain-set key=value` reaches pre-training only, and wins there over `--set`.",
        "- `--set key=value` reaches fine-tuning, and pre-training too, except the keys of a stage's own schedule ("
        + ", ".join(f"`{k}`" for k in schedule_keys(staged)) + "), which `--set` gives to fine-tuning only.",
        "- A model setting only one stage reads (the *stage* column below) is refused where the other stage would "
        "ignore it, with the option that reaches its stage: `--set params.mixup=false` under `mp4sr run` answers "
        "`give it with --pretrain-set params.mixup=false`. `mp4sr pretrain`, `mp4sr finetune` and `mp4sr train` (by the stage in `params.stage`) refuse them likewise.",
        "- " + " and ".join(f"`{k}`" for k in SOURCE_KEYS) + " describe the pre-training source: given with `--set` "
        "they reach pre-training only, and only beside `--pretrain-dataset A`; without it they are refused (they would "
        "also change the fine-tuning and test set), and `--pretrain-set` gives them to pre-training on the same dataset.",
        "- `params.stage` is set by the command and refused in `--set` / `--pretrain-set`.",
        "",
        "## Models",
        "",
        "| model | what | item content | pre-training stage | adds items after training |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        cls = model_class(name)
        lines.append(f"| `{name}` | {_cell(_summary(cls))} | {'yes' if reads_content(cls) else 'no'} "
                     f"| {'yes' if is_pretrainable(cls) else 'no'} | {'yes' if can_add_items(cls) else 'no'} |")
    lines += ["", "Adding items after training (`Recommender.add_items`, `POST /items`) needs a model that scores "
              "items from their content tables; the others answer that they cannot (HTTP 400).", ""]
    for name in names:
        rows = model_settings(name)
        lines += [f"### `{name}`", ""]
        lines += _table(rows, with_stage=any(r.stage for r in rows)) if rows else ["No settings."]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
