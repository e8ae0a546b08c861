"""Run an experiment's plan, one training at a time, never redoing a finished run.

Each run lives in ``<out>/runs/<key>/``: what ``train_run`` writes (config.yaml, metrics.json,
epochs.jsonl, best.pt), ``test_ranks.npy`` (0-based rank of each test user's item) and, written last,
``run.json``: a run is finished exactly when its ``run.json`` exists. A folder without one is what an
interrupted run left behind; it is cleared and the run is trained again.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mp4sr.data import Dataset, LeaveOneOut, leave_one_out, load_dataset
from mp4sr.errors import ConfigError
from mp4sr.evaluate.coldstart import cold_item_split
from mp4sr.experiment.spec import Cell, DatasetSpec, ExperimentSpec, Plan, PlannedRun, load_spec, make_plan
from mp4sr.report.experiment import RunResult, write_experiment_report
from mp4sr.train import train_run

log = logging.getLogger("mp4sr.experiment")

DONE = "run.json"


class DatasetCache:
    """Each dataset (and cold-item variant) loaded once per experiment."""

    def __init__(self) -> None:
        self._datasets: dict[tuple, Dataset] = {}

    def get(self, spec: DatasetSpec, user_core: int = 5, item_core: int = 0) -> Dataset:
        key = (spec.name, spec.cold_items, spec.cold_seed, user_core, item_core)
        if key not in self._datasets:
            dataset = load_dataset(spec.name, user_core, item_core)
            if spec.cold_items is not None:
                dataset = cold_item_split(dataset, spec.cold_items, spec.cold_seed).dataset
            self._datasets[key] = dataset
        return self._datasets[key]

    def split(self, spec: DatasetSpec) -> LeaveOneOut:
        return leave_one_out(self.get(spec))


def is_done(runs_dir: Path, key: str) -> bool:
    return (runs_dir / key / DONE).is_file()


def execute(plan: Plan, runs_dir: Path, datasets: DatasetCache | None = None) -> int:
    """Train every run of ``plan`` that is not finished; returns how many were trained."""
    datasets = datasets or DatasetCache()
    todo = [r for r in plan.runs if not is_done(runs_dir, r.key)]
    log.info("%d runs planned, %d finished before, %d to train", len(plan.runs), len(plan.runs) - len(todo), len(todo))
    for i, run in enumerate(todo, 1):
        log.info("[%d/%d] %s %s on %s, seed %d%s -> %s", i, len(todo), run.entry, run.stage, run.dataset.key,
                 run.seed, f" ({run.point})" if run.point else "", runs_dir / run.key)
        train_one(run, runs_dir, datasets)
    return len(todo)


def train_one(run: PlannedRun, runs_dir: Path, datasets: DatasetCache) -> None:
    folder = runs_dir / run.key
    if folder.exists():  # left by an interrupted run
        shutil.rmtree(folder)
    data = run.config.data
    dataset = datasets.get(run.dataset, data.user_core, data.item_core)
    t0 = time.perf_counter()
    output = train_run(run.config, folder, dataset=dataset)
    np.save(folder / "test_ranks.npy", np.asarray(output.result.test_ranks, dtype=np.int64))
    (folder / "last.pt").unlink(missing_ok=True)  # only needed to resume this run, which is finished
    record = {
        "key": run.key, "stage": run.stage, "entry": run.entry, "model": run.config.model,
        "dataset": run.dataset.key, "seed": run.seed, "point": run.point, "pretrain_key": run.pretrain_key,
        "best_epoch": output.result.best_epoch, "epochs": len(output.result.history),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    tmp = folder / (DONE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(folder / DONE)


def load_result(runs_dir: Path, cell: Cell) -> RunResult | None:
    """The stored outcome of a finished final run (None when it is not finished)."""
    folder = runs_dir / cell.key
    if not is_done(runs_dir, cell.key):
        return None
    metrics = json.loads((folder / "metrics.json").read_text())
    history_file = folder / "epochs.jsonl"
    history = [json.loads(line) for line in history_file.read_text().splitlines() if line.strip()] \
        if history_file.is_file() else []
    return RunResult(cell.entry, cell.role, cell.dataset, cell.seed, cell.point, metrics["valid"], metrics["test"],
                     np.load(folder / "test_ranks.npy"), history)


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


def run_experiment(path: str | Path, out: str | Path | None = None, only: list[str] | None = None,
                   overrides: list[str] | None = None, train: bool = True) -> ExperimentOutcome:
    """Run (or resume) the experiment of ``path`` and write its tables and plots into ``out``.

    ``only``: train and report only these entries; ``overrides``: ``key=value`` settings applied to
    every stage of every run (e.g. ``train.epochs=3``, which changes the runs' keys);
    ``train=False``: only (re)write the report from the runs already finished.
    """
    require_report_libraries()
    spec: ExperimentSpec = load_spec(path)
    out = Path(out or spec.output or Path("runs") / "experiments" / spec.name)
    runs_dir = out / "runs"
    plan = make_plan(spec, runs_dir.resolve(), only, overrides)
    datasets = DatasetCache()
    trained = execute(plan, runs_dir, datasets) if train else 0
    loaded = [load_result(runs_dir, cell) for cell in plan.cells]
    results = [r for r in loaded if r is not None]
    used = {c.dataset for c in plan.cells}
    splits = {d.key: datasets.split(d) for d in spec.datasets if d.key in used} if spec.coldstart else {}
    files = write_experiment_report(results, out, spec.metrics, spec.select_metric, spec.test, spec.alpha,
                                    title=spec.name, splits=splits)
    return ExperimentOutcome(out, trained, len(loaded) - len(results), files)
