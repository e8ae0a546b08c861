"""Typed configuration with defaults in one place.

Layers, later wins: defaults < YAML file < ``--set key=value`` overrides (dotted keys, YAML values)
< explicit command-line options. Unknown keys are errors.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from mp4sr.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ColumnSettings(Section):
    """Column names of a table or RecBole atomic dataset (the other layouts have fixed files)."""

    user: str = Field("user_id", description="user id column of the interactions")
    item: str = Field("item_id", description="item id column of the interactions and of the item table")
    time: str | None = Field("timestamp", description="time column (numbers, or ISO dates and datetimes); when it is "
                             "absent or null, each user's interactions keep the file's order")
    text: list[str] | None = Field(None, description="item table columns of item text, each non-empty one a text "
                                   "vector of the item (up to features.max_vectors); null: every string column "
                                   "except the image one")
    image: str | None = Field("image", description="item table column of image file paths, relative to the item "
                              "table's folder; null: no images")


class DataSettings(Section):
    max_len: int = Field(50, ge=1, description="items of history a model sees")
    training_mode: Literal["sequence", "prefix"] = Field(
        "sequence", description="'sequence': every position of a whole sequence is a target (fast); "
        "'prefix': one example per prefix (RecBole's form)"
    )
    user_core: int = Field(5, ge=1, description="minimum interactions per user for raw logs")
    item_core: int = Field(0, ge=0, description="minimum interactions per item for raw logs")
    join_datasets: list[str] = Field(
        default_factory=list, description="more datasets whose users and items join this one's (pre-training on "
        "several domains); ids become '<dataset>/<id>'"
    )
    exclude_users_of: list[str] = Field(
        default_factory=list, description="datasets whose users are dropped from this one (pre-training on a "
        "source that shares no user with the target)"
    )
    columns: ColumnSettings = Field(default_factory=ColumnSettings, description="column names of tables and atomic files")


NoDecay = Literal["bias", "norm", "embedding"]


class TrainSettings(Section):
    epochs: int = Field(300, ge=0, description="most training epochs (early stopping usually ends sooner)")
    batch_size: int = Field(2048, ge=1, description="training sequences per step (the global batch under torchrun)")
    eval_batch_size: int = Field(1024, ge=1, description="users ranked at once in validation and test")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    optimizer: Literal["adam", "adamw"] = Field(
        "adam", description="'adam': weight_decay is an L2 term added to the gradient (the official MP4SR code's); "
        "'adamw': decoupled weight decay, each step shrinks the weights by lr * weight_decay"
    )
    weight_decay: float = Field(0.0, ge=0, description="weight decay (see optimizer)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam's (or AdamW's) coefficients of the running "
                                       "means of the gradient and of its square (RecTools': [0.9, 0.98])")
    no_decay: list[NoDecay] | None = Field(
        None, description="parameters without weight decay: any of bias, norm, embedding; "
        "default (null): [bias, norm] with adamw, none with adam"
    )
    clip_grad: float | None = Field(5.0, description="max gradient norm; null disables clipping")
    patience: int = Field(20, ge=1, description="epochs without validation improvement before stopping")
    lr_decay: float | None = Field(
        None, gt=0, lt=1, description="after every lr_patience epochs without validation improvement, go back to "
        "the best epoch's weights and multiply the learning rate by this; null: one rate throughout")
    lr_patience: int = Field(3, ge=1, description="epochs without validation improvement before each lr_decay")
    lr_min: float | None = Field(
        None, gt=0, description="with lr_decay: a decay that would take the learning rate below this ends the run "
        "instead (gains at rates that small are validation noise); null: decay until patience stops the run")
    valid_metric: str = Field("ndcg@10", description="validation metric that picks the best epoch and stops "
                              "training: recall@K, ndcg@K or mrr@K")
    seed: int = Field(2024, description="seed of weights, shuffling and dropout")
    device: str = Field("cpu", description="'cpu', 'cuda' (this process's GPU under torchrun) or 'cuda:N'")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="'bf16': the forward pass and the loss under torch.autocast in bfloat16 (CUDA or CPU); "
        "evaluation always scores in float32"
    )
    threads: int | None = Field(None, description="torch intra-op threads (default: torch's choice)")
    group_by_length: bool = Field(True, description="batch sequences of similar length together (less padding, "
                                  "batches still shuffled)")
    progress: bool = Field(True, description="show a progress bar per epoch")
    tensorboard: bool = Field(True, description="write TensorBoard event files in <out>/tensorboard (needs the "
                              "tensorboard package; off without it)")

    @field_validator("valid_metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        name, _, k = v.lower().partition("@")
        if name not in {"recall", "ndcg", "mrr"} or not k.isdigit():
            raise ValueError("valid_metric must look like 'ndcg@10', 'recall@20' or 'mrr@10'")
        return v.lower()

    @model_validator(mode="after")
    def _decay_before_stopping(self) -> "TrainSettings":
        if self.lr_decay and self.lr_patience >= self.patience:
            raise ValueError(f"lr_patience ({self.lr_patience}) must be below patience ({self.patience}): the run "
                             "stops before its learning rate would ever decay")
        if self.lr_min is not None and not self.lr_decay:
            raise ValueError("lr_min only applies with lr_decay, the rate never falls without it")
        return self


class EvalSettings(Section):
    ks: list[int] = Field(default_factory=lambda: [5, 10, 20, 50], description="cut-offs K of Recall@K, NDCG@K "
                          "and MRR@K")
    exclude_history: bool = Field(
        False, description="drop the user's history items from the ranking (off: the standard protocol)"
    )
    test_every_epoch: bool = Field(
        False, description="also rank the test set after every epoch and record it in epochs.jsonl, for "
        "learning curves (the best epoch is still chosen on validation)",
    )
    test_both_protocols: bool = Field(
        False, description="also rank the test set of the best epoch with the user's history items kept and "
        "excluded (metrics.json: test_by_protocol), so one training reports both protocols",
    )


AUTO = "auto"  # a feature setting left to the data: shipped vectors, else the default encoder
ImageMode = Literal["embed", "keywords"]
TextPooling = Literal["auto", "cls", "mean"]


class FeatureSettings(Section):
    """Which item features content-based models read, and how they are made: the one form of these
    settings, for training (``features.*``), `mp4sr features` (its options) and the Python API
    (``mp4sr.features.feature_stores``). Each setting that picks or shapes a store is here; how one
    call runs (shards, progress) is not."""

    text: str | None = Field(AUTO, description="'auto', an encoder name or folder, or null for none")
    image: str | None = Field(AUTO, description="'auto', 'efficientnet-lite0', a CLIP folder, or null")
    image_mode: ImageMode = Field(
        "embed", description="'embed': image vectors; 'keywords': the words an image model sees, as text vectors")
    image_from: str | None = Field(AUTO, description="a dataset whose image vectors to join by item id")
    max_vectors: int = Field(10, ge=1, description="vectors kept per item (sentences, fields, images)")
    text_vectors: str | None = Field(None, description="precomputed text vectors to import instead: a .parquet/.npz "
                                     "keyed by item id, a folder of <id>.pth|.npy files, or a matrix in item order")
    image_vectors: str | None = Field(None, description="precomputed image vectors to import instead (same forms)")
    text_pooling: TextPooling = Field(AUTO, description="pooling of a plain Hugging Face text encoder folder: 'cls' "
                                      "or 'mean' ('auto': a sentence-transformers model's own, else mean)")
    n_keywords: int = Field(15, ge=1, description="words kept per image in image_mode 'keywords'")
    vocabulary: str | list[str] | None = Field(None, description="words (or a file of them, one a line) a CLIP "
                                               "image encoder picks keywords from; null: the ImageNet classes")
    dtype: Literal["float16", "float32"] = Field("float16", description="how stored vectors are kept on disk")

    @field_validator("text", "image", "image_from", "text_vectors", "image_vectors", "vocabulary", mode="before")
    @classmethod
    def _path_as_text(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v


def _default_model() -> str:
    # The models package names it; imported when a config is first made, as it imports this module.
    from mp4sr.models import DEFAULT_MODEL

    return DEFAULT_MODEL


class RunConfig(Section):
    model: str = Field(default_factory=_default_model, description="model name (`mp4sr models`); its settings go "
                       "under params")
    dataset: str = Field("amazon-scientific-mm", description="dataset name (`mp4sr datasets`) or folder")
    params: dict[str, Any] = Field(default_factory=dict, description="the model's own settings")
    init_from: str | None = Field(None, description="checkpoint whose encoder weights start the training")
    data: DataSettings = Field(default_factory=DataSettings, description="how the dataset is read and cut")
    features: FeatureSettings = Field(default_factory=FeatureSettings, description="item vectors of content models")
    train: TrainSettings = Field(default_factory=TrainSettings, description="optimisation and early stopping")
    eval: EvalSettings = Field(default_factory=EvalSettings, description="the full-ranking evaluation")
    _parsed_params: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _params_fit_the_model(self) -> "RunConfig":
        """``params`` are checked against the model's Config as the config is built, so that a typo fails
        before any data is read; they stay a plain dict in the dumped YAML (stored configs and run keys
        do not change)."""
        from mp4sr.models import model_class  # the models import torch: only when a config is built

        config = model_class(self.model).Config
        try:
            self._parsed_params = config(**self.params)
        except ValidationError as e:
            raise params_error(self.model, e, config.model_fields) from None
        return self

    @property
    def parsed_params(self) -> Any:
        """``params`` as the model's typed Config (its defaults filled in)."""
        return self._parsed_params


def params_error(model: str, error: ValidationError, known: Any) -> ConfigError:
    """A model's settings that do not validate, each named as the ``params.<key>`` a user wrote."""
    lines = []
    for problem in error.errors():
        key = ".".join(["params", *map(str, problem["loc"])])
        if problem["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(problem["loc"][-1]), list(known), n=1)
            lines.append(f"  {key}: {model} has no such setting" + (f" (did you mean params.{close[0]}?)" if close else ""))
        else:
            lines.append(f"  {key}={problem['input']!r}: {problem['msg']}")
    return ConfigError(f"invalid settings for model {model!r}:\n" + "\n".join(lines)
                       + f"\n(its settings: `mp4sr config --show --model {model}`)")


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["train.lr=1e-4", "params.hidden=128"]`` -> nested dict; values are parsed as YAML."""
    tree: dict[str, Any] = {}
    for pair in pairs or []:
        key, eq, raw = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"override {pair!r} is not key=value (e.g. train.lr=1e-4)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {pair!r}: value is not valid YAML: {e}") from None
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with another override")
        node[leaf] = value
    return tree


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return content


def build_config(
    cls: type[BaseModel] = RunConfig,
    file: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    **explicit: Any,
) -> Any:
    """Defaults < base < file < overrides < explicit (non-None) values."""
    content = read_yaml(file) if file else {}
    if {"models", "datasets"} & set(content) and cls is RunConfig:
        raise ConfigError(f"{file} is an experiment file (run it with `mp4sr experiment {file}`); --config takes one "
                          "run's settings, e.g. configs/run/mp4sr-example.yaml or a run's config.yaml")
    tree = deep_merge(base or {}, content)
    tree = deep_merge(tree, parse_overrides(overrides))
    tree = deep_merge(tree, {k: v for k, v in explicit.items() if v is not None})
    try:
        return cls(**tree)
    except ValidationError as e:
        raise ConfigError(f"invalid configuration:\n{e}") from None
