"""The experiment file: models x datasets x seeds (x a small hyper-parameter grid), and its plan.

An experiment file (YAML) looks like::

    name: paper
    base: other.yaml              # optional: start from another experiment file (this one wins)
    datasets: [amazon-scientific-mm, {name: amazon-scientific-mm, cold_items: 0.2}]
    seeds: [2024, 2025, 2026]
    defaults: {train: {progress: false}}      # every stage of every run
    pretrain_defaults: {}                     # pre-training stages only, over `defaults`
    reference: mp4sr                          # tested against the best baseline (default: the entry named
                                              # after the default pre-trainable model, mp4sr.models.DEFAULT_PRETRAINABLE)
    search: {trials: 20}                      # every search's budget (or true; false: no grids, no searches)
    models:
      - name: sasrec                          # model = name unless given
        grid: {train.lr: [1e-3, 1e-4]}        # chosen on validation (mean over seeds)
      - name: sasrec-tuned
        model: sasrec
        search: {space: {train.lr: {log_uniform: [1e-4, 1e-2]}, params.hidden: {choice: [64, 128]}}}
      - name: mp4sr
        pretrain: {}                          # a pre-training stage first (its settings here)
      - name: mp4sr-no-cmcl
        extends: mp4sr                        # the settings of another entry, then these
        pretrain: {params: {cmcl: false}}
      - name: mp4sr-text
        extends: mp4sr
        shared: {params: {modalities: [text]}}   # both stages
      - name: mp4sr-text-probe
        extends: mp4sr-text
        datasets: [amazon-scientific-mm]      # only on these rows (default: every row; children inherit)

An entry's own RunConfig sections (``params``, ``train``, ``data``, ``features``, ``eval``) configure
its final (fine-tuning) stage. Layers, later wins: the model's stage defaults (a pre-trainable model
class's ``stage_defaults``) < ``defaults`` (<
``pretrain_defaults``) < ``shared`` < the stage's own settings < the grid point < command-line
overrides. ``pretrain: null`` in an entry that extends another removes the pre-training stage. A pre-training stage
may name its own ``dataset`` (transfer: pre-train there, fine-tune on each of the experiment's datasets),
e.g. ``pretrain: {dataset: amazon-scientific, data: {exclude_users_of: [amazon-scientific-mm]}}``.

An entry with a ``search`` is tuned first (``mp4sr.experiment.tune``: Optuna trials of its final stage
on the first seed, in ``<output>/tune.db``), then its best settings run with every seed. Searches share
the top-level ``search`` mapping (``trials``, ``seed``, pruning) and must have the same budget, so that
the models of a comparison are tuned alike.

Every run is keyed by a hash of its full configuration (and of its pre-training run's key): runs that
two entries share (one pre-training for several fine-tunings) are trained once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mp4sr.config import RunConfig, build_config, deep_merge, parse_overrides, read_yaml
from mp4sr.errors import ConfigError
from mp4sr.experiment.search import SearchSpec, point_label, point_tree
from mp4sr.models import DEFAULT_PRETRAINABLE
from mp4sr.models.base import Stage
from mp4sr.stages import stage_defaults

STAGE_SECTIONS = ("params", "train", "data", "features", "eval", "init_from")
# Settings that change how a run is shown or how fast it goes, never its results: not in the key.
VOLATILE = {"train": ("progress", "threads", "eval_batch_size", "tensorboard")}
# The settings that runs were first stored with. Every setting added since is left out of the key while at
# its default, so that the runs stored before it existed keep their keys.
FIRST_KEYED = {
    "data": {"max_len", "training_mode", "user_core", "item_core"},
    "features": {"text", "image", "image_mode", "image_from", "max_vectors"},
    "train": {"epochs", "batch_size", "eval_batch_size", "lr", "weight_decay", "clip_grad", "patience", "valid_metric",
              "seed", "device", "threads", "group_by_length", "progress"},
    "eval": {"ks", "exclude_history"},
}
Role = Literal["baseline", "reference", "ablation"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Strict):
    """A dataset, optionally with a cold-item split (``cold_items``: fraction of items held out).

    ``protocol`` reports the test ranking with the user's history items kept or excluded: its runs rank
    the test set both ways (``eval.test_both_protocols``), so two entries of one dataset that differ only
    in ``protocol`` (and ``label``) share their runs."""

    name: str
    cold_items: float | None = Field(None, gt=0, lt=1)
    cold_seed: int = 0
    label: str | None = None
    protocol: Literal["history_kept", "history_excluded"] | None = None

    @property
    def key(self) -> str:
        if self.label:
            return self.label
        key = self.name if self.cold_items is None else f"{self.name}-cold{round(self.cold_items * 100)}"
        return f"{key}-history-excluded" if self.protocol == "history_excluded" else key


class EntrySpec(_Strict):
    """One row of the result tables: a model and its settings (after ``extends`` is resolved)."""

    name: str
    model: str
    role: Role = "baseline"
    pretrain: dict[str, Any] | None = None
    shared: dict[str, Any] = Field(default_factory=dict)
    stage: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    search: SearchSpec | None = Field(None, description="tuned on validation first; its best settings then run")
    datasets: list[str] | None = Field(None, description="the dataset rows this entry runs on, by key as --datasets "
                                       "names them (the row of the other ranking protocol comes along); "
                                       "null: every row")

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values ({dotted key: value}); [{}] without a grid."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]


class ExperimentSpec(_Strict):
    name: str
    output: str | None = Field(None, description="output folder (default runs/experiments/<name>)")
    datasets: list[DatasetSpec]
    seeds: list[int] = Field(default_factory=lambda: [2024])
    search_seed: int | None = Field(None, description="seed of the searches' trials (default: the first of seeds)")
    defaults: dict[str, Any] = Field(default_factory=dict)
    pretrain_defaults: dict[str, Any] = Field(default_factory=dict)
    reference: str | None = DEFAULT_PRETRAINABLE
    select_metric: str = "ndcg@10"
    metrics: list[str] = Field(default_factory=lambda: ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@20"])
    test: Literal["ttest", "wilcoxon"] = Field("ttest", description="paired test of the reference vs the best baseline")
    alpha: float = 0.05
    coldstart: bool = True
    search: bool = Field(True, description="false: ignore the entries' grids and searches (their own settings only)")
    reuse: list[str] = Field(default_factory=list, description="output folders of other experiments whose finished "
                             "runs this one copies instead of training them again (matched by run key: the same "
                             "settings, seed and data give the same key)")
    archive: str | None = Field(None, description="a folder that keeps the records of the finished runs (run.json, "
                                "metrics, epochs, test ranks; no checkpoints): each run is recorded there when it "
                                "finishes, and a run recorded there counts as finished, so a folder kept under "
                                "version control carries the results to a new checkout")
    models: list[EntrySpec]

    @property
    def tuning_seed(self) -> int:
        """The seed the searches' trials train with."""
        return self.seeds[0] if self.search_seed is None else self.search_seed

    @property
    def searched(self) -> list[EntrySpec]:
        """The entries tuned before they run (none with ``search: false``)."""
        return [e for e in self.models if e.search is not None] if self.search else []


# ---------------------------------------------------------------------------------------------- file


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read an experiment file (following ``base:``), resolve ``extends`` and validate it."""
    tree = _read_with_base(Path(path), seen=())
    raw_models = tree.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise ConfigError(f"{path}: 'models' must be a non-empty list of entries")
    tree["datasets"] = [{"name": d} if isinstance(d, str) else d for d in tree.get("datasets") or []]
    tree["models"] = _resolve_entries(raw_models, tree.get("reference", DEFAULT_PRETRAINABLE), path)
    if isinstance(tree.get("search"), dict):  # settings every entry's search shares (its budget above all)
        shared = tree.pop("search")
        for item in tree["models"]:
            if item.get("search") is not None:
                own = item["search"] if "space" in item["search"] else {"space": item["search"]}
                item["search"] = deep_merge(shared, own)
    try:
        spec = ExperimentSpec(**tree)
    except ValidationError as e:
        raise ConfigError(f"{path}: invalid experiment file:\n{e}") from None
    _check_unique([d.key for d in spec.datasets], "dataset", path)
    keys = [d.key for d in spec.datasets]
    for entry in spec.models:
        unknown = sorted(set(entry.datasets or []) - set(keys))
        if unknown:
            raise ConfigError(f"{path}: entry {entry.name!r} names dataset rows {', '.join(unknown)} that the file "
                              f"does not have; rows: {', '.join(keys)}")
    _check_searches(spec, path)
    return spec


def select(spec: ExperimentSpec, seeds: list[int] | None = None, datasets: list[str] | None = None) -> ExperimentSpec:
    """``spec`` narrowed to some of its seeds and dataset rows (``--seeds``, ``--datasets``). The runs kept are
    those the whole file plans, with the same keys, and the searches keep the file's first seed. A dataset row
    is named by its key (``mp4sr experiment --status`` lists them); the row that differs from a named one in
    the ranking protocol alone comes with it, as the two share their runs."""
    update: dict[str, Any] = {}
    if seeds:
        unknown = sorted(set(seeds) - set(spec.seeds))
        if unknown:
            raise ConfigError(f"--seeds: {', '.join(map(str, unknown))} not among the experiment's seeds "
                              f"({', '.join(map(str, spec.seeds))})")
        update["seeds"] = [s for s in spec.seeds if s in seeds]
        update["search_seed"] = spec.tuning_seed
    if datasets:
        keys = [d.key for d in spec.datasets]
        unknown = sorted(set(datasets) - set(keys))
        if unknown:
            raise ConfigError(f"--datasets: no dataset rows {', '.join(unknown)}; rows: {', '.join(keys)}")

        update["datasets"] = _rows(spec, datasets)
    return spec.model_copy(update=update) if update else spec


def _rows(spec: ExperimentSpec, keys: list[str]) -> list[DatasetSpec]:
    """The dataset rows named by ``keys``, with the rows that differ from them in the ranking protocol alone."""
    named = [_training_data(d) for d in spec.datasets if d.key in keys]
    return [d for d in spec.datasets if _training_data(d) in named]


def _training_data(d: DatasetSpec) -> dict[str, Any]:
    return d.model_dump(exclude={"protocol", "label"})


def _runs_on(spec: ExperimentSpec, entry: EntrySpec, dataset: DatasetSpec) -> bool:
    """Whether ``entry`` runs on the dataset row ``dataset`` (its ``datasets``, if any, name the rows)."""
    return entry.datasets is None or dataset in _rows(spec, entry.datasets)


def _check_searches(spec: ExperimentSpec, path) -> None:
    """Every tuned entry of a comparison gets the same budget, and an entry is tuned one way."""
    for entry in spec.models:
        if entry.search is not None and entry.grid:
            raise ConfigError(f"{path}: entry {entry.name!r} has both a grid and a search: keep one")
    budgets = {e.name: e.search.trials for e in spec.models if e.search is not None}
    if len(set(budgets.values())) > 1:
        listed = ", ".join(f"{name}: {n}" for name, n in budgets.items())
        raise ConfigError(f"{path}: the searches have different budgets ({listed}); give every entry the same "
                          "trials, e.g. once at the top: search: {trials: 20}")


def _read_with_base(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' files include each other")
    tree = read_yaml(path)
    base = tree.pop("base", None)
    if base is None:
        return tree
    parent = _read_with_base((path.parent / base), (*seen, path.resolve()))
    return deep_merge(parent, tree)


def _resolve_entries(raw: list[Any], reference: str | None, path) -> list[dict[str, Any]]:
    by_name: dict[str, dict[str, Any]] = {}
    for item in raw:
        item = {"name": item} if isinstance(item, str) else dict(item)
        if "name" not in item:
            raise ConfigError(f"{path}: every entry of 'models' needs a name")
        _check_unique([*by_name, item["name"]], "model entry", path)
        parent = item.pop("extends", None)
        if parent is not None:
            if parent not in by_name:
                raise ConfigError(f"{path}: entry {item['name']!r} extends {parent!r}, which is not defined above it")
            base = {k: v for k, v in by_name[parent].items() if k not in ("name", "role")}
            base.setdefault("model", parent)
            # A variant of the reference (or of one of its variants) is an ablation unless it says otherwise.
            if parent == reference or by_name[parent].get("role") == "ablation":
                base["role"] = "ablation"
            item = deep_merge(base, item)
        by_name[item["name"]] = item
    return [_entry_fields(item, reference) for item in by_name.values()]


def _entry_fields(item: dict[str, Any], reference: str | None) -> dict[str, Any]:
    stage = {k: item.pop(k) for k in STAGE_SECTIONS if k in item}
    item.setdefault("model", item["name"])
    item.setdefault("role", "reference" if item["name"] == reference else "baseline")
    return {**item, "stage": stage}


def _check_unique(names: list[str], what: str, path) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{path}: {what} names must be unique; repeated: {', '.join(dup)}")


# ---------------------------------------------------------------------------------------------- plan


@dataclass
class PlannedRun:
    """One training: a stage of one (entry, dataset, seed, grid point), keyed by its configuration."""

    key: str
    stage: Stage  # 'finetune' for the run a table cell reports, whether or not the model has stages
    config: RunConfig
    dataset: DatasetSpec
    seed: int
    entry: str
    point: str
    pretrain_key: str | None = None


@dataclass
class Cell:
    """A final run as the tables see it."""

    entry: str
    role: str
    dataset: str
    seed: int
    point: str
    key: str
    protocol: str | None = None  # which of the run's two test rankings (None: its only one)


@dataclass
class Plan:
    runs: list[PlannedRun] = field(default_factory=list)  # unique, every pre-training before its users
    cells: list[Cell] = field(default_factory=list)


def _check_only(spec: ExperimentSpec, only: list[str] | None) -> None:
    unknown = sorted(set(only or []) - {e.name for e in spec.models})
    if unknown:
        names = ", ".join(e.name for e in spec.models)
        raise ConfigError(f"--only: no entries named {', '.join(unknown)}; entries: {names}")


def make_plan(spec: ExperimentSpec, runs_dir: Path, only: list[str] | None = None,
              overrides: list[str] | None = None, tuned: dict[tuple[str, str], dict[str, Any]] | None = None) -> Plan:
    """Every run of the experiment (of the entries in ``only``), validated before anything trains.
    ``tuned``: the best settings of each searched (entry, dataset key); a searched entry without them
    has its pre-training planned and no final run yet."""
    _check_only(spec, only)
    override_tree = parse_overrides(overrides)
    plan, seen = Plan(), set()
    for dataset, seed, entry in itertools.product(spec.datasets, spec.seeds, spec.models):
        if (only and entry.name not in only) or not _runs_on(spec, entry, dataset):
            continue
        pre = _pretrain_run(spec, entry, dataset, seed, override_tree, runs_dir)
        if pre is not None:
            _add(plan, seen, pre)
        if spec.search and entry.search is not None:
            best = (tuned or {}).get((entry.name, dataset.key))
            points = [] if best is None else [best]
        else:
            points = entry.grid_points() if spec.search else [{}]
        for point in points:
            run = _final_run(spec, entry, dataset, seed, point, pre, override_tree, runs_dir)
            _add(plan, seen, run)
            plan.cells.append(Cell(entry.name, entry.role, dataset.key, seed, run.point, run.key, dataset.protocol))
    return plan


def _pretrain_run(spec: ExperimentSpec, entry: EntrySpec, dataset: DatasetSpec, seed: int, override_tree: dict,
                  runs_dir: Path) -> PlannedRun | None:
    if entry.pretrain is None:
        return None
    layers = [spec.defaults, spec.pretrain_defaults, entry.shared, entry.pretrain, override_tree]
    return _planned(entry, "pretrain", layers, dataset, seed, "", None, runs_dir)


def _final_run(spec: ExperimentSpec, entry: EntrySpec, dataset: DatasetSpec, seed: int, point: dict[str, Any],
               pre: PlannedRun | None, override_tree: dict, runs_dir: Path) -> PlannedRun:
    layers = [spec.defaults, entry.shared, entry.stage, point_tree(point), override_tree]
    return _planned(entry, "finetune", layers, dataset, seed, point_label(point), pre, runs_dir)


@dataclass
class SearchTask:
    """The search of one entry on one dataset: its trials are the entry's final stage on the
    experiment's tuning seed (its first seed), at points of the space (after that seed's pre-training, if any)."""

    entry: str
    dataset: DatasetSpec
    search: SearchSpec
    pretrain: PlannedRun | None
    make_config: Callable[[dict[str, Any]], RunConfig]
    study: str  # named by the entry, the dataset and a hash of what the trials start from and the space


def search_tasks(spec: ExperimentSpec, runs_dir: Path, only: list[str] | None = None,
                 overrides: list[str] | None = None) -> list[SearchTask]:
    """The searches to finish before the final runs of the searched entries can be planned."""
    _check_only(spec, only)
    override_tree = parse_overrides(overrides)
    tasks = []
    for dataset, entry in itertools.product(spec.datasets, spec.searched):
        if (only and entry.name not in only) or not _runs_on(spec, entry, dataset):
            continue
        seed = spec.tuning_seed
        pre = _pretrain_run(spec, entry, dataset, seed, override_tree, runs_dir)

        def make_config(point, entry=entry, dataset=dataset, pre=pre) -> RunConfig:
            return _final_run(spec, entry, dataset, seed, point, pre, override_tree, runs_dir).config

        start = _final_run(spec, entry, dataset, seed, {}, pre, override_tree, runs_dir)
        space = entry.search.model_dump(mode="json", exclude={"trials"})  # a larger budget continues the study
        digest = hashlib.sha1(json.dumps([start.key, space], sort_keys=True).encode()).hexdigest()[:8]
        tasks.append(SearchTask(entry.name, dataset, entry.search, pre, make_config,
                                f"{entry.name}@{dataset.key}-{digest}"))
    return tasks


def _planned(entry: EntrySpec, stage: Stage, layers: list[dict], dataset: DatasetSpec, seed: int, point: str,
             pre: PlannedRun | None, runs_dir: Path) -> PlannedRun:
    tree = stage_defaults(entry.model, stage)
    for layer in layers:
        tree = deep_merge(tree, layer)
    source = tree.pop("dataset", None)
    if source is not None:
        if stage != "pretrain":
            raise ConfigError(f"entry {entry.name!r}: only a pre-training stage names its own dataset; the final "
                              "stage runs on each of the experiment's datasets")
        dataset = DatasetSpec(name=str(source))  # pre-training on another dataset (transfer)
    fixed: dict[str, Any] = {"model": entry.model, "dataset": dataset.name, "train": {"seed": seed}}
    if dataset.protocol is not None and stage != "pretrain":
        fixed["eval"] = {"test_both_protocols": True}
    if pre is not None:
        fixed["init_from"] = str(runs_dir / pre.key / "best.pt")
    config: RunConfig = build_config(RunConfig, base=deep_merge(tree, fixed))  # a typo in params fails now
    key = run_key(config, dataset, pre.key if pre else None)
    return PlannedRun(key, stage, config, dataset, seed, entry.name, point, pre.key if pre else None)


def run_key(config: RunConfig, dataset: DatasetSpec, pretrain_key: str | None) -> str:
    """12 hex digits of a hash of everything that determines the run's results."""
    tree = config.model_dump(mode="json")
    defaults = RunConfig().model_dump(mode="json")
    for section, first in FIRST_KEYED.items():
        for name in [n for n in tree[section] if n not in first and tree[section][n] == defaults[section].get(n)]:
            del tree[section][name]
    tree["init_from"] = pretrain_key  # the pre-training run, not where its folder happens to be
    for section, names in VOLATILE.items():
        for name in names:
            tree[section].pop(name, None)
    tree["dataset_spec"] = dataset.model_dump(mode="json", exclude={"label", "protocol"})  # same training
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _add(plan: Plan, seen: set[str], run: PlannedRun) -> None:
    if run.key not in seen:
        seen.add(run.key)
        plan.runs.append(run)
