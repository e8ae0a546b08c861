"""The ``mp4sr`` command: one sub-command per stage, plus the end-to-end ``run``."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from mp4sr.config import FeatureSettings, build_config
from mp4sr.errors import MP4SRError

if TYPE_CHECKING:
    from mp4sr.models.base import Stage

app = typer.Typer(
    help="Multimodal pre-training for sequential recommendation (MP4SR).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)


def _out_console() -> Console:
    """stdout console; wide when not a terminal so that tables in logs are not cut."""
    return Console() if sys.stdout.isatty() else Console(width=160)

ConfigOpt = typer.Option(
    None, "--config", "-c", help="YAML file of settings: a run's config.yaml or e.g. configs/run/mp4sr-example.yaml "
    "(keys: `mp4sr config --show`).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a setting: key=value, e.g. train.lr=1e-4 (repeatable).")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def default_out_dir(command: str, dataset: str, model: str | None = None) -> Path:
    from mp4sr.train import distributed

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = "-".join(p for p in (command, Path(dataset).name, model, stamp) if p)
    return distributed.broadcast_object(Path("runs") / name)  # under torchrun: rank 0's, on every rank


def _start_distributed(device: str = "cpu") -> bool:
    """Join torchrun's process group when launched by it (NCCL for ``device`` cuda, else gloo); True on
    the process that prints."""
    from mp4sr.train import distributed

    distributed.init_from_env(device=device)
    return distributed.is_main()


def metrics_table(metrics: dict[str, dict[str, float]], title: str) -> Table:
    """Rows = metric family, columns = K, for each split present."""
    table = Table(title=title)
    table.add_column("split")
    table.add_column("metric")
    ks = sorted({int(k.split("@")[1]) for split in ("valid", "test") for k in metrics.get(split, {})})
    for k in ks:
        table.add_column(f"@{k}", justify="right")
    for split in ("valid", "test"):
        values = metrics.get(split) or {}
        for name in ("recall", "ndcg", "mrr"):
            if any(f"{name}@{k}" in values for k in ks):
                table.add_row(split, name, *(f"{values.get(f'{name}@{k}', float('nan')):.4f}" for k in ks))
    return table


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    _setup_logging(verbose)


# for commands that read a run's settings: a --config file's dataset holds unless the option is given
RunDatasetOpt = typer.Option(
    None, "--dataset", "-d", help="Dataset name or path (default: the --config file's, else amazon-scientific-mm).")


@app.command()
def train(
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Model name (see `mp4sr models`; default: the --config file's, else sasrec)."),
    dataset: Optional[str] = RunDatasetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default runs/<...>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out from its last.pt."),
) -> None:
    """Train and evaluate one model; writes metrics.json, test_ranks.npy, best.pt, last.pt, epochs.jsonl and config.yaml."""
    from mp4sr.config import RunConfig, build_config
    from mp4sr.models.base import is_pretrainable
    from mp4sr.stages import check_overrides
    from mp4sr.train import train_run

    cfg: RunConfig = build_config(RunConfig, config, set_, model=model, dataset=dataset)
    if is_pretrainable(cfg.model):  # the stage in its params.stage: refuse what only the other stage reads
        stage = cfg.parsed_params.stage
        check_overrides(cfg.model, stage, [kv for kv in set_ or [] if not kv.startswith("params.stage=")], "`mp4sr train`")
    if resume and out is None:
        raise MP4SRError("--resume needs --out: the folder of the run to continue")
    main = _start_distributed(cfg.train.device)
    out = out or default_out_dir("train", cfg.dataset, cfg.model)
    if main:
        console.print(f"{'resuming' if resume else 'training'} [bold]{cfg.model}[/] on [bold]{cfg.dataset}[/] -> {out}")
    output = train_run(cfg, out, resume=resume)
    if not main:
        return
    _out_console().print(
        metrics_table(output.metrics(), f"{cfg.model} on {cfg.dataset} (best epoch {output.result.best_epoch})")
    )
    console.print(f"metrics: {out / 'metrics.json'}")


def _stage(kind: Stage, dataset: Optional[str], config: Optional[Path], set_: Optional[list[str]], out: Optional[Path],
           init_from: Optional[str] = None, resume: bool = False):
    """Build the config of a stage of a pre-trainable model (its stage defaults under the user's settings),
    train it, print its table; returns (config, output, out)."""
    from mp4sr.config import RunConfig
    from mp4sr.stages import check_overrides, stage_config
    from mp4sr.train import train_run

    cfg: RunConfig = stage_config(kind, config, set_, dataset=dataset, init_from=init_from)
    check_overrides(cfg.model, kind, set_, f"`mp4sr {kind}`")
    main = _start_distributed(cfg.train.device)
    out = out or default_out_dir(kind, cfg.dataset, cfg.model)
    if main:
        joined = "".join(f" + [bold]{name}[/]" for name in cfg.data.join_datasets)
        console.print(f"{kind} [bold]{cfg.model}[/] on [bold]{cfg.dataset}[/]{joined} -> {out}")
    output = train_run(cfg, out, resume=resume and (out / "last.pt").is_file())
    if main:
        _out_console().print(metrics_table(output.metrics(), f"{kind}: {cfg.model} on {cfg.dataset} (best epoch {output.result.best_epoch})"))
    return cfg, output, out


OutOpt = typer.Option(None, "--out", "-o", help="Output folder (default runs/<...>).")


@app.command()
def pretrain(dataset: Optional[str] = RunDatasetOpt, config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt,
             out: Optional[Path] = OutOpt, resume: bool = typer.Option(False, "--resume", help="Continue the run in --out.")) -> None:
    """Pre-train the MP4SR encoder (next-item prediction + cross-modality contrast)."""
    _stage("pretrain", dataset, config, set_, out, resume=resume)


@app.command()
def finetune(
    dataset: Optional[str] = RunDatasetOpt,
    from_: Optional[str] = typer.Option(None, "--from", help="Pre-trained checkpoint (file or run folder); none = from scratch."),
    config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, out: Optional[Path] = OutOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
) -> None:
    """Fine-tune MP4SR for next-item prediction (from a pre-trained checkpoint, on its dataset unless
    --dataset, --config or --set names another)."""
    if from_ and dataset is None:
        dataset = _checkpoint_dataset(from_, config, set_)
    _stage("finetune", dataset, config, set_, out, init_from=from_, resume=resume)


def _checkpoint_dataset(checkpoint: str, config: Optional[Path], set_: Optional[list[str]]) -> Optional[str]:
    """The dataset a pre-trained checkpoint was trained on, when neither the --config file nor --set
    names one (None otherwise, and for a checkpoint without a config)."""
    from mp4sr.config import parse_overrides, read_yaml
    from mp4sr.train.run import read_pretrained

    if "dataset" in parse_overrides(set_) or (config is not None and "dataset" in read_yaml(config)):
        return None
    return (read_pretrained(checkpoint).get("config") or {}).get("dataset")


@app.command()
def run(
    dataset: Optional[str] = RunDatasetOpt,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML applied to both stages."),
    pretrain_dataset: Optional[str] = typer.Option(
        None, "--pretrain-dataset", help="Pre-train on this dataset instead (transfer; its item vectors must come from the same encoders)."),
    pretrain_set: Optional[list[str]] = typer.Option(
        None, "--pretrain-set", help="key=value for pre-training only (wins there over --set)."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", "-s", help="key=value for fine-tuning, and for pre-training too unless the key is a stage's "
        "schedule (train.lr, train.epochs, ... : see docs/settings.md); pre-training-only settings are refused here."),
    out: Optional[Path] = OutOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
) -> None:
    """End to end: features -> pre-train -> fine-tune -> test -> report."""
    import json as _json

    from mp4sr.report import write_run_report
    from mp4sr.stages import route_run_overrides, stage_config

    planned = stage_config("finetune", config, set_)  # the model whose settings are routed
    dataset = dataset or planned.dataset
    pre_set, set_ = route_run_overrides(planned.model, set_, pretrain_set, transfer=pretrain_dataset is not None)
    main = _start_distributed(planned.train.device)
    out = out or default_out_dir("run", dataset, planned.model)
    pre_cfg, pre, _ = _stage("pretrain", pretrain_dataset or dataset, config, pre_set, out / "pretrain", resume=resume)
    fin_cfg, fin, _ = _stage("finetune", dataset, config, set_, out / "finetune",
                             init_from=str(out / "pretrain" / "best.pt"), resume=resume)
    if not main:
        return
    (out / "metrics.json").write_text(_json.dumps(fin.metrics(), indent=2))
    report = write_run_report(out, pre.metrics(), fin.metrics(), pre_cfg, fin_cfg, pre_params=pre.params())
    console.print(f"report: {report}")


DataConfigOpt = typer.Option(
    None, "--config", "-c", help="A run's YAML file: its dataset and data section (columns, cores) say how to read the dataset.")
DataSetOpt = typer.Option(None, "--set", "-s", help="A data.* setting, e.g. data.columns.user=uid (repeatable).")


def _only_data_settings(set_: Optional[list[str]], refusal: str) -> None:
    """Refuse a --set that is not a data.* setting, with ``refusal`` saying what the command takes."""
    other = [kv for kv in set_ or [] if not kv.startswith("data.")]
    if other:
        raise MP4SRError(f"--set {other[0]}: {refusal}")


def _feature_dataset(dataset: Optional[str], config: Optional[Path], set_: Optional[list[str]]):
    """What `features` extracts from: the dataset's name, or, under --config / --set, the dataset read
    with their data settings (column names, cores)."""
    from mp4sr.config import RunConfig, build_config
    from mp4sr.data import find_dataset, load_dataset
    from mp4sr.data.loader import detect_format

    _only_data_settings(set_, "`mp4sr features` takes data.* settings; its encoders are its options "
                              "(--text-encoder, --image-encoder, ...)")
    cfg: RunConfig = build_config(RunConfig, config, set_, dataset=dataset)
    folder = find_dataset(cfg.dataset)
    if (config is None and not set_) or (folder.is_dir() and detect_format(folder) is None):
        return cfg.dataset  # by name: also item tables without interactions (hm-sample)
    return load_dataset(folder, cfg.data.user_core, cfg.data.item_core, cfg.data.columns)


@app.command()
def tune(
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Model name (default: the --config file's, else sasrec)."),
    dataset: Optional[str] = RunDatasetOpt,
    space: Path = typer.Option(..., "--space", help="YAML search: {trials: N, space: {train.lr: {log_uniform: [1e-4, 1e-2]}, ...}}."),
    trials: Optional[int] = typer.Option(None, "--trials", "-n", min=1, help="Finished trials to reach (default: the --space file's, else 20)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder of the study and best.yaml (default runs/tune-<dataset>-<model>)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL (default sqlite:///<out>/study.db)."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default <model>-<dataset>)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampler seed (default: the --space file's, else 0)."),
) -> None:
    """Search hyper-parameters on the validation metric (Optuna TPE, median pruning); rerunning the
    same command continues the study. Writes the best trial's config to <out>/best.yaml."""
    from mp4sr.config import RunConfig, build_config, deep_merge
    from mp4sr.data import find_dataset
    from mp4sr.experiment.runner import DatasetCache
    from mp4sr.experiment.spec import DatasetSpec
    from mp4sr.experiment.search import load_search, point_tree
    from mp4sr.experiment.tune import tune as run_search
    from mp4sr.train import train_run

    base: RunConfig = build_config(RunConfig, config, set_, model=model, dataset=dataset)
    search = load_search(space, trials=trials, seed=seed)
    find_dataset(base.dataset)  # a dataset that is not there stops the search before its study is made
    out = out or Path("runs") / f"tune-{Path(base.dataset).name}-{base.model}"
    storage = storage or f"sqlite:///{out / 'study.db'}"
    name = study or f"{base.model}-{Path(base.dataset).name}"
    tree = base.model_dump(mode="json")
    console.print(f"tuning [bold]{base.model}[/] on [bold]{base.dataset}[/]: {search.trials} trials, "
                  f"study {name} in {storage}")
    datasets = DatasetCache()  # read once for all trials (once per reading settings a space varies)

    def train_trial(trial_config: RunConfig, on_epoch):
        dataset = datasets.for_data(DatasetSpec(name=trial_config.dataset), trial_config.data)
        return train_run(trial_config, dataset=dataset, on_epoch=on_epoch)

    result = run_search(lambda point: build_config(RunConfig, base=deep_merge(tree, point_tree(point))), search,
                        storage, name, train_trial, best_file=out / "best.yaml", progress=base.train.progress)
    if result.best_config is None:
        raise MP4SRError(f"no trial of study {name} completed (all pruned or failed); widen the space or "
                         "set pruner: none in the --space file")
    table = Table(title=f"best of {result.finished} trials: valid {base.train.valid_metric} {result.best_value:.4f}")
    table.add_column("setting")
    table.add_column("value", justify="right")
    for key, value in result.best_point.items():
        table.add_row(key, str(value))
    _out_console().print(table)
    console.print(f"best config: {result.best_file}  (mp4sr train --config {result.best_file})")


def _feature_option(name: str, flag: str, help: str | None = None) -> Any:
    """The option of `mp4sr features` for ``FeatureSettings.<name>``: None unless given, so that the
    setting's own default applies (and is shown in the help)."""
    field = FeatureSettings.model_fields[name]
    default = "" if field.default is None else f" (default: {field.default})"
    return typer.Option(None, flag, help=f"{help or field.description}{default}.")


TextEncoderOpt = _feature_option("text", "--text-encoder", "sentence-transformers name or folder, or a HF encoder "
                                 "folder ('auto': the dataset's shipped vectors, else all-MiniLM-L6-v2)")
ImageEncoderOpt = _feature_option("image", "--image-encoder", "'efficientnet-lite0' or a CLIP folder ('auto': the "
                                  "dataset's shipped vectors, else efficientnet-lite0 on its image files)")
ImageModeOpt = _feature_option("image_mode", "--image-mode", "embed | keywords")
ImageFromOpt = _feature_option("image_from", "--image-from", "dataset whose image vectors to join by item id "
                               "('auto': <name>-mm when present; 'none': no other)")
MaxVectorsOpt = _feature_option("max_vectors", "--max-vectors")
TextPoolingOpt = _feature_option("text_pooling", "--text-pooling", "auto | cls | mean (plain HF encoder folders)")
KeywordsOpt = _feature_option("n_keywords", "--keywords")
VocabularyOpt = _feature_option("vocabulary", "--vocabulary", "word list for CLIP keywords (default: ImageNet classes)")
DtypeOpt = _feature_option("dtype", "--dtype", "float16 | float32")
TextVectorsOpt = _feature_option(
    "text_vectors", "--text-vectors", "import these text vectors: a .parquet/.npz keyed by item id, a folder of "
    "<id>.pth|.npy files, or a .npy/raw float32 matrix in the dataset's item order (train with --set "
    "features.text_vectors=PATH)")
ImageVectorsOpt = _feature_option("image_vectors", "--image-vectors", "import these image vectors (the same forms; "
                                  "train with --set features.image_vectors=PATH)")
NoTextOpt = typer.Option(False, "--no-text", help="No text store.")
NoImageOpt = typer.Option(False, "--no-image", help="No image store.")


def _feature_settings(no_text: bool, no_image: bool, **given: Any) -> FeatureSettings:
    """The FeatureSettings of `mp4sr features` options: those given over the defaults."""
    values = {name: value for name, value in given.items() if value is not None}
    if no_text:
        values["text"] = None
    if no_image:
        values["image"] = None
    return build_config(FeatureSettings, base=values)


@app.command()
def features(
    dataset: Optional[str] = RunDatasetOpt,
    config: Optional[Path] = DataConfigOpt,
    set_: Optional[list[str]] = DataSetOpt,
    text_encoder: Optional[str] = TextEncoderOpt,
    image_encoder: Optional[str] = ImageEncoderOpt,
    image_mode: Optional[str] = ImageModeOpt,
    image_from: Optional[str] = ImageFromOpt,
    shard: Optional[str] = typer.Option(
        None, "--shard", help="I/N: compute part I of N, I counted from 0 (0/2 and 1/2; merge with features-merge)."),
    max_vectors: Optional[int] = MaxVectorsOpt,
    no_text: bool = NoTextOpt,
    no_image: bool = NoImageOpt,
    text_pooling: Optional[str] = TextPoolingOpt,
    keywords: Optional[int] = KeywordsOpt,
    vocabulary: Optional[Path] = VocabularyOpt,
    dtype: Optional[str] = DtypeOpt,
    text_vectors: Optional[Path] = TextVectorsOpt,
    image_vectors: Optional[Path] = ImageVectorsOpt,
) -> None:
    """Compute (or import) item text and image vectors into the feature cache.

    Under torchrun (no --shard) each process computes one shard and rank 0 merges them; on several
    machines their MP4SR_CACHE_DIR must be one shared folder."""
    from datetime import timedelta

    from mp4sr.features import run_features, run_features_merge
    from mp4sr.train import distributed

    settings = _feature_settings(no_text, no_image, text=text_encoder, image=image_encoder, image_mode=image_mode,
                                 image_from=image_from, max_vectors=max_vectors, text_pooling=text_pooling,
                                 n_keywords=keywords, vocabulary=vocabulary, dtype=dtype, text_vectors=text_vectors,
                                 image_vectors=image_vectors)
    one_shard_per_process = shard is None and distributed.launched()
    if one_shard_per_process:
        distributed.init_from_env(timeout=timedelta(days=2))  # gloo: only barriers; shards may take long
        shard = f"{distributed.rank()}/{distributed.world_size()}"
    items = _feature_dataset(dataset, config, set_)
    run_features(items, settings, shard=shard, echo=typer.echo)
    if one_shard_per_process:
        distributed.barrier()
        if distributed.is_main():
            run_features_merge(items, settings=settings, echo=typer.echo)


@app.command("features-merge")
def features_merge(
    dataset: str = typer.Option(..., "--dataset", "-d", help="The dataset the shards were computed for (name or path)."),
    parts: Optional[list[Path]] = typer.Argument(None, help="'.partial' folders copied from other machines."),
    config: Optional[Path] = DataConfigOpt,
    set_: Optional[list[str]] = DataSetOpt,
    text_encoder: Optional[str] = TextEncoderOpt,
    image_encoder: Optional[str] = ImageEncoderOpt,
    image_mode: Optional[str] = ImageModeOpt,
    image_from: Optional[str] = ImageFromOpt,
    max_vectors: Optional[int] = MaxVectorsOpt,
    text_pooling: Optional[str] = TextPoolingOpt,
    keywords: Optional[int] = KeywordsOpt,
    vocabulary: Optional[Path] = VocabularyOpt,
    dtype: Optional[str] = DtypeOpt,
    no_text: bool = NoTextOpt,
    no_image: bool = NoImageOpt,
) -> None:
    """Merge the shards of `mp4sr features --shard I/N` into one store (give the options the shards ran with)."""
    from mp4sr.features import run_features_merge

    settings = _feature_settings(no_text, no_image, text=text_encoder, image=image_encoder, image_mode=image_mode,
                                 image_from=image_from, max_vectors=max_vectors, text_pooling=text_pooling,
                                 n_keywords=keywords, vocabulary=vocabulary, dtype=dtype)
    run_features_merge(_feature_dataset(dataset, config, set_), parts or (), settings, echo=typer.echo)


@app.command()
def recommend(
    ids: Optional[list[str]] = typer.Argument(None, help="History item ids, oldest first."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="An exported model folder, best.pt or the run folder holding it."),
    history: Optional[list[str]] = typer.Option(None, "--history", help="Item ids (also comma/space-separated)."),
    k: int = typer.Option(10, "-k", "--k"),
    include_seen: bool = typer.Option(False, "--include-seen", help="Also recommend items of the history."),
    skip_unknown: bool = typer.Option(False, "--skip-unknown", help="Ignore unknown ids instead of failing."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Top-k next items after a history (`--history ID ID ...`)."""
    from mp4sr.serve.commands import recommend_command, split_ids

    recommend_command(checkpoint, split_ids(history, ids), k, exclude_seen=not include_seen,
                      skip_unknown=skip_unknown, as_json=as_json)


@app.command()
def export(
    checkpoint: Path = typer.Option(..., "--checkpoint"),
    out: Path = typer.Option(..., "--out", "-o", help="A .parquet or .csv file."),
    k: int = typer.Option(10, "-k", "--k"),
    include_seen: bool = typer.Option(False, "--include-seen"),
    batch_size: int = typer.Option(1024, "--batch-size"),
    device: str = typer.Option("cpu", "--device", help="Score on this device: cpu or cuda."),
) -> None:
    """Top-k of every user (after the whole sequence) to .parquet or .csv."""
    from mp4sr.serve.commands import export_command

    export_command(checkpoint, out, k, exclude_seen=not include_seen, batch_size=batch_size, echo=typer.echo,
                   device=device)


@app.command("export-model")
def export_model(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="best.pt or the run folder holding it."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write model.pt and its model card into."),
    images: bool = typer.Option(False, "--images", help="Also copy the catalogue's photos into the folder (images/), "
                                "for the page; without it the page shows them only where their files are."),
) -> None:
    """The model as one folder that serves with no dataset or feature cache (model.pt + model card)."""
    from mp4sr.serve.commands import export_model_command

    export_model_command(checkpoint, out, images=images, echo=typer.echo)


@app.command()
def serve(
    checkpoint: Path = typer.Option(..., "--checkpoint"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(8000, "--port"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads for scoring."),
    device: str = typer.Option("cpu", "--device", help="Score on this device: cpu or cuda."),
) -> None:
    """HTTP service: a page to try the model at /, POST /recommend, POST /items, GET /health, docs at /docs."""
    from mp4sr.serve.commands import serve_command

    serve_command(checkpoint, host, port, threads=threads, device=device)


@app.command()
def experiment(
    file: Path = typer.Argument(..., help="Experiment file (YAML, see configs/experiments/)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: the file's 'output', else runs/experiments/<name>)."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Train and report only these entries (a,b or repeated)."),
    seeds: Optional[list[str]] = typer.Option(None, "--seeds", help="Train and report only these of the file's seeds (a,b or repeated)."),
    datasets: Optional[list[str]] = typer.Option(
        None, "--datasets", help="Train and report only these dataset rows, by the key --status shows (a,b or repeated); "
        "a row's twin ranked by the other protocol comes with it."),
    set_: Optional[list[str]] = SetOpt,
    report_only: bool = typer.Option(False, "--report-only", help="Only rewrite the tables and plots from the finished runs."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Train in this many processes (each with cores/jobs threads)."),
    train_only: bool = typer.Option(False, "--train-only", help="Train only; write no report (for extra processes or machines sharing --out)."),
    status: bool = typer.Option(False, "--status", help="Only show how many runs of each row are finished, running or interrupted."),
) -> None:
    """Run or resume a grid of models x datasets x seeds; write tables, significance tests and plots."""
    from mp4sr.experiment import run_experiment

    only, datasets = _names(only), _names(datasets)
    try:
        seed_list = [int(s) for s in _names(seeds) or []] or None
    except ValueError:
        raise MP4SRError(f"--seeds takes whole numbers: {', '.join(seeds or [])}") from None
    if status:
        if report_only or train_only:
            raise MP4SRError("--status only reads the runs: drop --report-only / --train-only")
        _experiment_status(file, out, only, set_, seed_list, datasets)
        return
    outcome = run_experiment(file, out, only, set_, train=not report_only, jobs=jobs, report=not train_only,
                             seeds=seed_list, datasets=datasets)
    if train_only:
        console.print(f"{outcome.trained} runs trained by this process")
        return
    console.print(f"{outcome.trained} runs trained, {outcome.missing} not finished; "
                  f"report: {outcome.files['results_md']}")


@app.command()
def compare(
    a: str = typer.Argument(..., metavar="A", help="Run folder(s) A: outputs of `mp4sr train` / `finetune` / `run`, or an "
                            "experiment's runs/<key> or archived record; several comma-separated (seeds) are averaged per user."),
    b: str = typer.Argument(..., metavar="B", help="Run folder(s) B, the same way."),
    protocol: Optional[str] = typer.Option(
        None, "--protocol", "-p", help="history_kept or history_excluded (default: as the runs ranked their test sets); "
        "a run without ranks that way is ranked again from its best.pt."),
    k: list[int] = typer.Option([10, 20], "--k", help="Cut-offs of Recall@K and NDCG@K (repeatable)."),
    alpha: float = typer.Option(0.05, "--alpha", help="Level of the detectable difference."),
    by: Optional[str] = typer.Option(
        None, "--by", help="Also test each group of users apart: item_count (the test item's training interactions), "
        "history (the history's length) or held_out (a cold-item split's held-out test items and the others)."),
    cold_items: Optional[float] = typer.Option(
        None, "--cold-items", min=0.0, max=1.0, help="With --by: the fraction of items the runs' cold-item split held out "
        "(default: as an experiment's record names its dataset, e.g. amazon-toys-mm-cold20, with cold seed 0)."),
    cold_seed: int = typer.Option(0, "--cold-seed", help="With --by and a cold-item split: the seed of the held-out items."),
) -> None:
    """Paired tests over test users between two sets of finished runs (t-test and Wilcoxon)."""
    from mp4sr.report.compare import compare_runs

    sides = [[part for part in side.split(",") if part.strip()] for side in (a, b)]
    frame = compare_runs(*sides, protocol=protocol, ks=sorted(set(k)), alpha=alpha, by=by, cold_items=cold_items,
                         cold_seed=cold_seed)
    n_users = int(frame["n_users"].iloc[0])
    table = Table(title=f"A ({len(sides[0])} run(s)) against B ({len(sides[1])}), paired over {n_users:,} test users"
                        f"{f', {protocol}' if protocol else ''}")
    columns = (["group", "users"] if by else []) + ["metric", "A", "B", "change", "t-test p", "Wilcoxon p", "detectable"]
    for col in columns:
        table.add_column(col, justify="left" if col in {"group", "metric"} else "right")
    previous = None
    for row in frame.itertuples():
        first = row.group != previous  # the group's label and size on its first row only
        if by and first and previous is not None:
            table.add_section()
        previous = row.group
        lead = ([row.group, f"{row.n_users:,}"] if first else ["", ""]) if by else []
        table.add_row(*lead, row.metric, f"{row.a:.4f}", f"{row.b:.4f}", f"{row.change_pct:+.1f}%", f"{row.p_ttest:.2g}",
                      f"{row.p_wilcoxon:.2g}", f"{row.detectable_pct:.1f}%")
    _out_console().print(table)
    console.print(f"detectable: the smallest difference a paired t-test over these users finds 4 times in 5 at p < {alpha}")


def _names(values: Optional[list[str]]) -> Optional[list[str]]:
    """The names of an option given as a,b or repeated; None when none."""
    names = [name.strip() for value in values or [] for name in value.split(",") if name.strip()]
    return names or None


def _experiment_status(file: Path, out: Optional[Path], only: Optional[list[str]], overrides: Optional[list[str]],
                       seeds: Optional[list[int]] = None, datasets: Optional[list[str]] = None) -> None:
    from mp4sr.experiment import experiment_status

    folder, rows = experiment_status(file, out, only, overrides, seeds, datasets)
    searches = [r for r in rows if r.stage == "search"]  # their counts are trials, not runs
    table = Table(title=f"{file.name} -> {folder}")
    columns = ["dataset", "entry", "stage", "finished", "running", "interrupted", "to do", "hours"]
    for col in columns + (["best valid (trial)"] if searches else []):
        table.add_column(col, justify="left" if col in {"dataset", "entry", "stage"} else "right")
    for r in rows:
        todo = max(0, r.planned - r.finished - r.running - r.interrupted)  # a search may run past its budget
        best = [f"{r.best:.4f} ({r.best_trial})" if r.best is not None else ""] if searches else []
        table.add_row(r.dataset, r.entry, r.stage, f"{r.finished}/{r.planned}", str(r.running or ""),
                      str(r.interrupted or ""), str(todo or ""), f"{r.seconds / 3600:.2f}", *best)
    _out_console().print(table)
    rows = [r for r in rows if r.stage != "search"]
    total = {name: sum(getattr(r, name) for r in rows) for name in ("planned", "finished", "running", "interrupted")}
    interrupted = f", {total['interrupted']} interrupted (rerunning continues them)" if total["interrupted"] else ""
    trials = (f"; searches: {sum(r.finished for r in searches)} of {sum(r.planned for r in searches)} trials finished "
              f"({sum(r.seconds for r in searches) / 3600:.1f} h)" if searches else "")
    waiting = [r for r in searches if r.finished < r.planned or r.running]
    if waiting:  # the final runs of a searched entry are planned from its best trial
        trials += (f"; the runs of {', '.join(sorted({r.entry for r in waiting}))} are planned once "
                   f"{'its search finishes' if len(waiting) == 1 else 'their searches finish'}")
    console.print(f"{total['finished']} of {total['planned']} runs finished, {total['running']} running{interrupted}; "
                  f"{sum(r.seconds for r in rows) / 3600:.1f} h of training stored{trials}")


@app.command()
def datasets(config: Optional[Path] = DataConfigOpt, set_: Optional[list[str]] = DataSetOpt) -> None:
    """List the datasets found in $MP4SR_DATA_DIR, ./data and ../shared/data, with their sizes; tables
    and atomic files are read with the data settings of --config / --set (column names, cores)."""
    from mp4sr.config import RunConfig, build_config
    from mp4sr.data import list_datasets, load_dataset
    from mp4sr.data.loader import ITEMS_ONLY
    from mp4sr.paths import data_roots

    _only_data_settings(set_, "`mp4sr datasets` takes data.* settings (how to read the files)")
    data = build_config(RunConfig, config, set_).data
    found = list_datasets()
    if not found:
        roots = ", ".join(str(r) for r in data_roots())
        raise MP4SRError(f"no datasets found in {roots}. Set $MP4SR_DATA_DIR to a folder of dataset folders.")
    table = Table(title="datasets")
    for col in ("name", "format", "users", "items", "interactions", "avg len", "path"):
        table.add_column(col, justify="right" if col in {"users", "items", "interactions", "avg len"} else "left")
    for name, folder, fmt in found:
        try:
            if fmt == ITEMS_ONLY:
                from mp4sr.features import load_items

                table.add_row(name, fmt, "-", f"{len(load_items(folder).catalogue.ids):,}", "-", "-", str(folder))
                continue
            s = load_dataset(folder, data.user_core, data.item_core, data.columns).summary()
            table.add_row(name, fmt, f"{s['users']:,}", f"{s['items']:,}", f"{s['interactions']:,}",
                          f"{s['avg_length']:.1f}", str(folder))
        except MP4SRError as e:
            table.add_row(name, fmt, "-", "-", "-", "-", f"unreadable: {e}")
    _out_console().print(table)


@app.command("config")
def config_(
    show: bool = typer.Option(False, "--show", help="Print every setting with its type, default and description."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Only this model's params (default: every model's)."),
    markdown: bool = typer.Option(False, "--markdown", help="As Markdown: the page docs/settings.md."),
) -> None:
    """The settings reference: keys of --config files and --set, per section and per model."""
    from mp4sr import reference

    if not show:
        raise MP4SRError("give --show (optionally --model NAME, --markdown)")
    typer.echo(reference.markdown(model) if markdown else reference.text(model), nl=False)


@app.command()
def models() -> None:
    """List the available models."""
    from mp4sr.models import REGISTRY

    for name, cls in sorted(REGISTRY.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        typer.echo(f"{name:12s} {doc}")


def main() -> None:
    try:
        app()
    except MP4SRError as e:
        code = getattr(e, "exit_code", 2)  # TrainingInterrupted: 128 + signal (130 SIGINT, 143 SIGTERM)
        console.print(f"[bold red]{'error' if code == 2 else 'interrupted'}:[/] {e}")
        sys.exit(code)
    except SystemExit as e:
        if e.code == 130:  # Typer ends a Ctrl-C outside training (which says it itself) with a silent exit 130
            console.print("interrupted")
        raise


if __name__ == "__main__":
    main()
