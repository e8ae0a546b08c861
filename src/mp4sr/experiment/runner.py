"""Run an experiment's plan, never redoing a finished run, in one process or several.

Each run lives in ``<out>/runs/<key>/``: what ``train_run`` writes (config.yaml, metrics.json,
epochs.jsonl, best.pt, ``test_ranks.npy``: the 0-based rank of each test user's item) and, written last,
``run.json``: a run is finished exactly when its ``run.json`` exists. A folder without one is what an
interrupted run left behind: the run continues from its ``last.pt`` (same settings, since the key is a
hash of them), or starts again when there is none.

An experiment's ``archive`` folder keeps the records of its finished runs (everything but checkpoints,
in ``<archive>/runs/<key>/``): a run is recorded there when it finishes, and a run recorded there is
copied back instead of trained, except a pre-training that a fine-tuning still needs (its ``best.pt``).

Several processes (``jobs``, or the same command started on several machines that share the
folder) share the plan through claims: a process trains a run only after creating
``<out>/runs/<key>.claim`` (atomically, holding its host and pid); a claim whose process is gone
is stale and is taken over. A fine-tuning waits until its pre-training is finished.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mp4sr.config import ColumnSettings, DataSettings
from mp4sr.data import Dataset, LeaveOneOut, leave_one_out, load_dataset
from mp4sr.errors import ConfigError
from mp4sr.evaluate.coldstart import cold_item_split
from mp4sr.experiment.spec import (
    Cell, DatasetSpec, ExperimentSpec, Plan, PlannedRun, SearchTask, load_spec, make_plan, search_tasks, select,
)
from mp4sr.report.experiment import RunResult, write_experiment_report
from mp4sr.train import train_run
from mp4sr.train.checkpoint import CheckpointError

log = logging.getLogger("mp4sr.experiment")

DONE = "run.json"


class DatasetCache:
    """Each dataset (and cold-item variant) loaded once per experiment."""

    def __init__(self) -> None:
        self._datasets: dict[tuple, Dataset] = {}

    def get(self, spec: DatasetSpec, user_core: int = 5, item_core: int = 0, columns: ColumnSettings | None = None) -> Dataset:
        key = (spec.name, spec.cold_items, spec.cold_seed, user_core, item_core, columns and columns.model_dump_json())
        if key not in self._datasets:
            dataset = load_dataset(spec.name, user_core, item_core, columns)
            if spec.cold_items is not None:
                dataset = cold_item_split(dataset, spec.cold_items, spec.cold_seed).dataset
            self._datasets[key] = dataset
        return self._datasets[key]

    def for_data(self, spec: DatasetSpec, data: DataSettings) -> Dataset:
        """The dataset as a run with the data settings ``data`` reads it (its cores and column names)."""
        return self.get(spec, data.user_core, data.item_core, data.columns)

    def split(self, spec: DatasetSpec) -> LeaveOneOut:
        return leave_one_out(self.get(spec))


def is_done(runs_dir: Path, key: str) -> bool:
    return (runs_dir / key / DONE).is_file()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim_is_live(path: Path) -> bool:
    """Whether the claim file ``path`` is held by a process that may still run (one on another host
    cannot be checked, so it counts as live)."""
    try:
        host, pid = path.read_text().split()
    except (OSError, ValueError):  # no claim (False), or one being written by a starting process (True)
        return path.exists()
    return host != socket.gethostname() or _alive(int(pid))


def claim(runs_dir: Path, key: str) -> bool:
    """Take the run ``key`` for this process; False when a live process holds it."""
    path = runs_dir / f"{key}.claim"
    me = f"{socket.gethostname()} {os.getpid()}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _claim_is_live(path):
                return False
            log.warning("taking over %s: the process that claimed it is gone", key)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def release(runs_dir: Path, key: str) -> None:
    (runs_dir / f"{key}.claim").unlink(missing_ok=True)


def reuse_run(key: str, runs_dir: Path, reuse: list[Path], checkpoint: bool = False) -> Path | None:
    """Copy the finished run ``key`` of the first folder of ``reuse`` that has it into ``runs_dir``
    (files hard-linked where the file system allows); returns where it came from, or None.
    ``checkpoint``: only from a folder that holds the run's ``best.pt`` (not from an archive's record)."""
    for other in reuse:
        source = other / "runs" / key
        if source.resolve() == (runs_dir / key).resolve() or not is_done(other / "runs", key):
            continue
        if checkpoint and not (source / "best.pt").is_file():
            continue
        tmp = runs_dir / f".{key}.reuse-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)

        def link_or_copy(src, dst):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        shutil.copytree(source, tmp, copy_function=link_or_copy, ignore=shutil.ignore_patterns("last.pt", "*.tmp*"))
        # run.json last, so that the copy counts as finished only when it is whole
        done = tmp / DONE
        done.rename(tmp / (DONE + ".pending"))
        shutil.rmtree(runs_dir / key, ignore_errors=True)  # an unfinished attempt of this run
        tmp.rename(runs_dir / key)
        (runs_dir / key / (DONE + ".pending")).rename(runs_dir / key / DONE)
        return source
    return None


RECORD_IGNORED = ("*.pt", "*.tmp*", "*.claim", "tensorboard")


def archive_run(folder: Path, archive: Path) -> bool:
    """Record the finished run in ``folder`` under ``<archive>/runs/<its key>/``: every file but the
    checkpoints, test ranks as int32; returns False when it was recorded before."""
    target = archive / "runs" / folder.name
    if is_done(archive / "runs", folder.name) or not is_done(folder.parent, folder.name):
        return False
    tmp = archive / "runs" / f".{folder.name}.record-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns(*RECORD_IGNORED, DONE, "test_ranks*.npy"))
    for ranks in folder.glob("test_ranks*.npy"):
        np.save(tmp / ranks.name, np.load(ranks).astype(np.int32))
    shutil.copy2(folder / DONE, tmp / DONE)  # last: the record counts only when it is whole
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return True


def _checkpoint_missing(runs_dir: Path, key: str) -> bool:
    """A finished run copied from an archive's record, which has no ``best.pt`` to fine-tune from."""
    return is_done(runs_dir, key) and not (runs_dir / key / "best.pt").is_file()


def execute(plan: Plan, runs_dir: Path, datasets: DatasetCache | None = None, poll: float = 5.0,
            reuse: list[Path] | None = None, archive: Path | None = None, checkpoints: bool = False) -> int:
    """Train every run of ``plan`` that is not finished and that no other live process has claimed;
    wait for runs other processes train when they hold up this one's work. A run finished in one of
    the ``reuse`` folders (or recorded in ``archive``) is copied from there instead, and every finished
    run is recorded in ``archive``. ``checkpoints``: every run of the plan must leave its ``best.pt`` (as
    the pre-training a search fine-tunes from). Returns how many runs this process trained."""
    datasets = datasets or DatasetCache()
    reuse = list(reuse or []) + ([archive] if archive is not None else [])
    # the pre-trainings that a fine-tuning still to train (here, or found nowhere else) starts from
    pending = {r.pretrain_key for r in plan.runs if r.pretrain_key
               and finished_in(r.key, runs_dir, [other / "runs" for other in reuse]) is None}
    if checkpoints:
        pending |= {r.key for r in plan.runs}
    for key in pending:  # a pre-training known only from its record is trained again for its fine-tunings
        if _checkpoint_missing(runs_dir, key):
            log.info("pre-training %s has no best.pt (a record): training it again for its fine-tunings", key)
            shutil.rmtree(runs_dir / key)
    todo = [r for r in plan.runs if not is_done(runs_dir, r.key)]
    log.info("%d runs planned, %d finished before, %d to train", len(plan.runs), len(plan.runs) - len(todo), len(todo))
    trained, total = 0, len(todo)
    while todo:
        todo = [r for r in todo if not is_done(runs_dir, r.key)]
        ready = [r for r in todo if r.pretrain_key is None or is_done(runs_dir, r.pretrain_key)]
        run = next((r for r in ready if claim(runs_dir, r.key)), None)
        if run is None:
            if todo:
                time.sleep(poll)  # the rest is being trained by other processes, or waits for them
            continue
        try:
            if is_done(runs_dir, run.key):  # finished by another process just before the claim
                continue
            source = reuse_run(run.key, runs_dir, reuse, checkpoint=run.key in pending)
            if source is not None:
                log.info("%s %s on %s, seed %d: the finished run %s", run.entry, run.stage, run.dataset.key,
                         run.seed, source)
                continue
            trained += 1
            log.info("[%d/%d] %s %s on %s, seed %d%s -> %s", total - len(todo) + 1, total, run.entry, run.stage,
                     run.dataset.key, run.seed, f" ({run.point})" if run.point else "", runs_dir / run.key)
            train_one(run, runs_dir, datasets)
        finally:
            release(runs_dir, run.key)
        if archive is not None:
            archive_run(runs_dir / run.key, archive)
    if archive is not None:  # runs finished before the archive was set, or by other processes
        for run in plan.runs:
            archive_run(runs_dir / run.key, archive)
    return trained


def train_one(run: PlannedRun, runs_dir: Path, datasets: DatasetCache) -> None:
    """Train ``run`` into ``<runs_dir>/<key>``, continuing from the ``last.pt`` an interrupted attempt
    left there; ``run.json``'s ``seconds`` counts this attempt only."""
    folder = runs_dir / run.key
    resume = (folder / "last.pt").is_file()
    if folder.exists() and not resume:  # killed before it saved anything
        shutil.rmtree(folder)
    dataset = datasets.for_data(run.dataset, run.config.data)
    t0 = time.perf_counter()
    try:
        output = train_run(run.config, folder, dataset=dataset, resume=resume)
    except CheckpointError as e:
        if not resume:
            raise
        log.warning("cannot continue %s (%s): training it from the start", folder, e)
        shutil.rmtree(folder)
        t0 = time.perf_counter()
        output = train_run(run.config, folder, dataset=dataset)
    (folder / "last.pt").unlink(missing_ok=True)  # only needed to resume this run, which is finished
    # "stage": 'pretrain' or 'finetune' (the records of runs finished before the two stages had one
    # vocabulary say 'final' for 'finetune'); informative only, nothing reads it back.
    record = {
        "key": run.key, "stage": run.stage, "entry": run.entry, "model": run.config.model,
        "dataset": run.dataset.key, "seed": run.seed, "point": run.point, "pretrain_key": run.pretrain_key,
        "best_epoch": output.result.best_epoch, "epochs": len(output.result.history),
        "seconds": round(time.perf_counter() - t0, 1), "resumed": resume,
    }
    tmp = folder / (DONE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(folder / DONE)


@dataclass
class StatusRow:
    """How far the runs of one entry, stage and dataset have got."""

    dataset: str
    entry: str
    stage: str
    planned: int = 0
    finished: int = 0
    running: int = 0
    interrupted: int = 0  # a folder with last.pt and no live claim: continues where it stopped
    seconds: float = 0.0  # training time of the finished runs (of a search: of its finished trials)
    best: float | None = None  # a search's best validation value so far
    best_trial: int | None = None


def plan_status(plan: Plan, runs_dir: Path, records: Sequence[Path] = ()) -> list[StatusRow]:
    """One row per (dataset, entry, stage) of ``plan``, in plan order; reads only small files. A run
    finished in one of ``records`` (an archive's or a reused experiment's runs) counts as finished."""
    rows: dict[tuple[str, str, str], StatusRow] = {}
    for run in plan.runs:
        row = rows.setdefault((run.dataset.key, run.entry, run.stage),
                              StatusRow(run.dataset.key, run.entry, run.stage))
        row.planned += 1
        folder = runs_dir / run.key
        source = finished_in(run.key, runs_dir, records)
        if source is not None:
            row.finished += 1
            try:
                row.seconds += float(json.loads((source / run.key / DONE).read_text()).get("seconds", 0.0))
            except (OSError, ValueError):
                pass
        elif _claim_is_live(runs_dir / f"{run.key}.claim"):
            row.running += 1
        elif (folder / "last.pt").is_file():
            row.interrupted += 1
    return list(rows.values())


def experiment_status(path: str | Path, out: str | Path | None = None, only: list[str] | None = None,
                      overrides: list[str] | None = None, seeds: list[int] | None = None,
                      datasets: list[str] | None = None) -> tuple[Path, list[StatusRow]]:
    """The output folder of the experiment of ``path`` and how far each of its rows has got (the final
    runs of a searched entry count once its search is finished); ``seeds``, ``datasets``: as
    :func:`run_experiment`'s."""
    spec = select(load_spec(path), seeds, datasets)
    out = output_folder(spec, out)
    runs_dir = (out / "runs").resolve()
    tasks = search_tasks(spec, runs_dir, only, overrides)
    plan = make_plan(spec, runs_dir, only, list(overrides or []), read_tuned(tasks, out))
    rows = plan_status(plan, runs_dir, record_folders(spec))
    return out, search_status(tasks, out) + rows


def search_status(tasks: list[SearchTask], out: Path) -> list[StatusRow]:
    """One row per search: its finished and running trials against its budget."""
    if not tasks:
        return []
    from mp4sr.experiment.tune import best_trial, finished_trials, load_existing, running_trials

    rows = []
    for task in tasks:
        study = load_existing(study_storage(out), task.study) if (out / "tune.db").is_file() else None
        row = StatusRow(task.dataset.key, task.entry, "search", planned=task.search.trials)
        if study is not None:
            done = finished_trials(study)
            row.finished = min(len(done), task.search.trials)
            row.running = len(running_trials(study))
            row.seconds = sum(t.duration.total_seconds() for t in done if t.duration is not None)
            best = best_trial(study)
            if best is not None:
                row.best, row.best_trial = best.value, best.number
        rows.append(row)
    return rows


def study_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'tune.db').resolve()}"


def copy_study(source: Path, target: Path) -> bool:
    """Copy the searches' SQLite file ``source`` to ``target`` (SQLite's backup, consistent while other
    processes write to it); False when there is nothing to copy."""
    import sqlite3

    if not source.is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    with sqlite3.connect(source) as src, sqlite3.connect(tmp) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    tmp.replace(target)
    return True


def tune_entries(tasks: list[SearchTask], out: Path, datasets: DatasetCache,
                 reuse: list[Path] | None = None, archive: Path | None = None) -> dict[tuple[str, str], dict]:
    """Run (or continue, or join) each search, after the pre-training its trials start from; returns the
    best settings of each (entry, dataset key) and writes each best config to ``<out>/tuned/``."""
    from mp4sr.experiment.tune import tune

    runs_dir = out / "runs"
    tuned = {}
    for task in tasks:
        if task.pretrain is not None:
            execute(Plan(runs=[task.pretrain]), runs_dir, datasets, reuse=reuse, archive=archive, checkpoints=True)
        log.info("tuning %s on %s: %d trials (study %s)", task.entry, task.dataset.key, task.search.trials, task.study)

        def train_trial(config, on_epoch, task=task):
            return train_run(config, dataset=datasets.for_data(task.dataset, config.data), on_epoch=on_epoch)

        keep = None if archive is None else lambda: copy_study(out / "tune.db", archive / "tune.db")
        result = tune(task.make_config, task.search, study_storage(out), task.study, train_trial,
                      best_file=out / "tuned" / f"{task.entry}@{Path(task.dataset.key).name}.yaml",
                      progress=task.make_config({}).train.progress, on_trial=keep)  # a killed search keeps its trials
        if result.best_config is None:
            raise ConfigError(f"no trial of the search of {task.entry} on {task.dataset.key} completed (all pruned "
                              f"or failed; study {task.study} in {out / 'tune.db'}): widen its space or set pruner: none")
        tuned[(task.entry, task.dataset.key)] = result.best_point
    return tuned


def read_tuned(tasks: list[SearchTask], out: Path) -> dict[tuple[str, str], dict]:
    """The best settings of the searches that are finished; trains nothing."""
    if not tasks or not (out / "tune.db").is_file():
        return {}
    from mp4sr.experiment.tune import read_outcome

    found = {}
    for task in tasks:
        result = read_outcome(study_storage(out), task.study, task.search.trials)
        if result is not None and result.best_config is not None:
            found[(task.entry, task.dataset.key)] = result.best_point
    return found


def finished_in(key: str, runs_dir: Path, records: Sequence[Path] = ()) -> Path | None:
    """The runs folder that holds the finished run ``key``: ``runs_dir``, else the first of ``records``
    (the ``runs/`` folders of an archive or of reused experiments) that has it; None when none has."""
    return next((folder for folder in [runs_dir, *records] if is_done(folder, key)), None)


def record_folders(spec: ExperimentSpec) -> list[Path]:
    """The ``runs/`` folders whose finished runs count for ``spec`` besides its own, in the order
    ``execute`` copies from them: its reused experiments', then its archive's."""
    return [Path(folder) / "runs" for folder in list(spec.reuse) + ([spec.archive] if spec.archive else [])]


def load_result(runs_dir: Path, cell: Cell, records: Sequence[Path] = ()) -> RunResult | None:
    """The stored outcome of a finished final run, from ``runs_dir`` or else from a record (None when
    no folder has it finished)."""
    source = finished_in(cell.key, runs_dir, records)
    if source is None:
        return None
    folder = source / cell.key
    metrics = json.loads((folder / "metrics.json").read_text())
    history_file = folder / "epochs.jsonl"
    history = [json.loads(line) for line in history_file.read_text().splitlines() if line.strip()] \
        if history_file.is_file() else []
    if cell.protocol is None:
        test, ranks = metrics["test"], np.load(folder / "test_ranks.npy")
    else:  # one of the two rankings of a run with eval.test_both_protocols
        test, ranks = metrics["test_by_protocol"][cell.protocol], np.load(folder / f"test_ranks_{cell.protocol}.npy")
    return RunResult(cell.entry, cell.role, cell.dataset, cell.seed, cell.point, metrics["valid"], test, ranks, history)


def require_report_libraries() -> None:
    """The tables need scipy and the plots matplotlib: say so before hours of training, not after."""
    import importlib.util

    missing = [m for m in ("scipy", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"experiments need {' and '.join(missing)}: pip install 'mp4sr[report]'")


@dataclass
class ExperimentOutcome:
    out: Path
    trained: int
    missing: int  # final runs not finished (with train=False, or filtered out)
    files: dict[str, Path]


def output_folder(spec: ExperimentSpec, out: str | Path | None = None) -> Path:
    """``out``, else the file's ``output``, else ``runs/experiments/<name>``."""
    return Path(out or spec.output or Path("runs") / "experiments" / spec.name)


def run_experiment(path: str | Path, out: str | Path | None = None, only: list[str] | None = None,
                   overrides: list[str] | None = None, train: bool = True, jobs: int = 1,
                   report: bool = True, seeds: list[int] | None = None,
                   datasets: list[str] | None = None) -> ExperimentOutcome:
    """Run (or resume) the experiment of ``path`` and write its tables and plots into ``out``.

    ``only``: train and report only these entries; ``overrides``: ``key=value`` settings applied to
    every stage of every run (e.g. ``train.epochs=3``, which changes the runs' keys);
    ``train=False``: only (re)write the report from the runs already finished; ``jobs``: train in
    this many processes (the others are started here, each with ``train.threads`` = cores / jobs
    unless set); ``report=False``: train only; ``seeds``, ``datasets``: train and report only these seeds
    and dataset rows (by key) of the file (the same runs as the whole file's, with the same keys).
    """
    require_report_libraries()
    spec: ExperimentSpec = select(load_spec(path), seeds, datasets)
    out = output_folder(spec, out)
    runs_dir = out / "runs"
    overrides = list(overrides or [])
    if train and jobs > 1 and not any(o.split("=", 1)[0].strip() == "train.threads" for o in overrides):
        overrides.append(f"train.threads={max(1, (os.cpu_count() or 1) // jobs)}")  # not part of the runs' keys
    tasks = search_tasks(spec, runs_dir.resolve(), only, overrides)
    if tasks and train:  # a missing library or a misspelt setting of a space fails now, not after hours
        from mp4sr.experiment.tune import check_space, require_optuna

        require_optuna()
        for task in tasks:
            check_space(task.make_config, task.search)
    archive = Path(spec.archive) if spec.archive else None
    if archive is not None and tasks and not (out / "tune.db").is_file():  # the searches of an earlier checkout
        copy_study(archive / "tune.db", out / "tune.db")
    plan = make_plan(spec, runs_dir.resolve(), only, overrides, read_tuned(tasks, out))
    cache = DatasetCache()
    reuse = [Path(folder) for folder in spec.reuse]
    trained = 0
    if train:
        workers = [_start_worker(path, out, only, overrides, seeds, datasets) for _ in range(jobs - 1)]
        try:  # every process takes part in the searches, then in the runs
            if tasks:
                plan = make_plan(spec, runs_dir.resolve(), only, overrides, tune_entries(tasks, out, cache, reuse, archive))
            trained = execute(plan, runs_dir, cache, reuse=reuse, archive=archive)
        finally:
            failed = [w.args for w in workers if w.wait() != 0]
            if archive is not None and tasks:
                copy_study(out / "tune.db", archive / "tune.db")
        if failed:
            raise ConfigError(f"{len(failed)} of the {jobs - 1} other experiment processes failed; see their log above")
    elif archive is not None:  # a report of runs trained before the archive was set records them too
        for run in plan.runs:
            archive_run(runs_dir / run.key, archive)
    if not report:
        return ExperimentOutcome(out, trained, 0, {})
    records = record_folders(spec)
    loaded = [load_result(runs_dir, cell, records) for cell in plan.cells]
    results = [r for r in loaded if r is not None]
    used = {c.dataset for c in plan.cells}
    splits = {d.key: cache.split(d) for d in spec.datasets if d.key in used} if spec.coldstart else {}
    files = write_experiment_report(results, out, spec.metrics, spec.select_metric, spec.test, spec.alpha,
                                    title=spec.name, splits=splits)
    return ExperimentOutcome(out, trained, len(loaded) - len(results), files)


def _start_worker(path, out: Path, only: list[str] | None, overrides: list[str], seeds: list[int] | None,
                  datasets: list[str] | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mp4sr", "experiment", str(path), "--out", str(out), "--train-only"]
    for name in only or []:
        cmd += ["--only", name]
    for seed in seeds or []:
        cmd += ["--seeds", str(seed)]
    for key in datasets or []:
        cmd += ["--datasets", key]
    for o in overrides:
        cmd += ["--set", o]
    return subprocess.Popen(cmd)
