"""Hyper-parameter search on the validation metric with Optuna.

A study lives in a storage (``sqlite:///FILE.db``): every trial, its settings, its validation curve
and its outcome are written there as they happen, so a search that crashed or was stopped with
Ctrl-C continues where it stopped when it is started again (a stopped trial counts as failed and is
drawn again), and several processes started on one storage and study share its trials.

- Sampler: TPE, with trial ``k`` drawing from seed ``seed + k`` (a fresh study repeats its draws;
  a resumed one or a second process draws new ones).
- Pruning: the trainer reports every epoch's validation metric (``Trainer(on_epoch=...)``); a trial
  whose metric at an epoch is below the median of the finished trials' at that epoch stops there.
- Budget: the search runs until ``trials`` trials are finished (completed or pruned), whoever ran
  them; with several processes a few more may finish (at most one per other process).
- Result: the best trial's whole ``RunConfig`` is kept with the trial and written as a YAML file
  that ``mp4sr train --config`` trains.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from filelock import FileLock

from mp4sr.config import RunConfig, build_config
from mp4sr.errors import ConfigError, MP4SRError
from mp4sr.experiment.search import SearchSpec, point_label
from mp4sr.train.trainer import TrainingInterrupted

log = logging.getLogger("mp4sr.tune")

CONFIG_ATTR = "config"  # the trial's user attribute holding its full RunConfig
POINT_ATTR = "point"  # and the one holding its settings, as the space names them


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("hyper-parameter search needs Optuna: pip install 'mp4sr[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and our log say what happens
    return optuna


def open_study(storage: str, name: str, search: SearchSpec):
    """The study ``name`` in ``storage`` (created when new), with the search's sampler and pruner."""
    optuna = require_optuna()
    # A study that another process creates at the same moment is loaded (load_if_exists)
    return optuna.create_study(
        study_name=name, storage=_storage(storage), direction="maximize", load_if_exists=True,
        sampler=trial_seeded_tpe(search.seed, search.startup_trials), pruner=_pruner(search),
    )


def _creating(url: str):
    """A lock beside a SQLite file: processes that start together would each create its tables."""
    if not url.startswith("sqlite:///"):
        return contextlib.nullcontext()
    path = Path(url[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{path}.lock")


def _storage(url: str):
    optuna = require_optuna()
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # writers take turns
    try:
        # Heartbeats: a trial whose process died (killed, crashed) is marked failed after the grace period.
        with _creating(url), _quiet_experimental(optuna):
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=30, grace_period=120)
    except Exception as e:  # sqlalchemy's errors for unusable URLs or files
        raise ConfigError(f"cannot open the study storage {url!r}: {e}") from None


@contextlib.contextmanager
def _quiet_experimental(optuna) -> Iterator[None]:
    """Heartbeats are an 'experimental' Optuna feature since 2.9: not worth a warning on every run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _pruner(search: SearchSpec):
    optuna = require_optuna()
    if search.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=search.prune_startup, n_warmup_steps=search.prune_warmup)


def trial_seeded_tpe(seed: int, startup_trials: int):
    """Optuna's TPE sampler with trial ``k`` drawing from seed ``seed + k``. One seeded TPE sampler
    would repeat the first draws of a study each time a process (re)starts on it; the trial number
    is unique within the study, whatever process runs it."""
    optuna = require_optuna()

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self):
            self._number, self._tpe = None, None

        def _for(self, trial):
            if trial.number != self._number:
                self._number = trial.number
                self._tpe = optuna.samplers.TPESampler(seed=seed + trial.number, n_startup_trials=startup_trials)
            return self._tpe

        def infer_relative_search_space(self, study, trial):
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial):
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            self._for(trial).after_trial(study, trial, state, values)

    return TrialSeededTPE()


class EpochReporter:
    """The trainer's ``on_epoch`` hook of a trial: reports the epoch's validation metric to the study
    and stops the trial (``optuna.TrialPruned``) when the pruner says so."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def __call__(self, record) -> None:
        self.trial.report(record.valid[self.metric], record.epoch)
        if self.trial.should_prune():
            raise require_optuna().TrialPruned(f"pruned after epoch {record.epoch}")


def check_space(make_config: Callable[[dict[str, Any]], RunConfig], search: SearchSpec) -> None:
    """Build the configuration at one point of the space: a misspelt setting fails now, not after a trial."""
    if not search.space:
        raise ConfigError("the search has an empty space: give settings under 'space', e.g. train.lr: "
                          "{log_uniform: [1.0e-4, 1.0e-2]}")
    make_config({key: dim.first() for key, dim in search.space.items()})


@dataclass
class TuneOutcome:
    study: str
    finished: int  # completed or pruned trials in the study
    best_value: float | None
    best_point: dict[str, Any]
    best_config: dict[str, Any] | None
    best_file: Path | None


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def tune(make_config: Callable[[dict[str, Any]], RunConfig], search: SearchSpec, storage: str, study_name: str,
         train: Callable[..., Any], best_file: Path | None = None, progress: bool = True,
         on_trial: Callable[[], None] | None = None) -> TuneOutcome:
    """Search ``search.space`` around ``make_config(point)`` until the study holds ``search.trials``
    finished trials; ``train(config, on_epoch=...)`` trains one trial and returns a ``RunOutput``.
    ``best_file``: where the best trial's config is written (after every new best, and at the end).
    ``on_trial``: called after every finished trial (the experiment runner copies the study to its archive)."""
    from tqdm.auto import tqdm

    check_space(make_config, search)
    study = open_study(storage, study_name, search)
    bar = tqdm(total=search.trials, initial=min(len(finished_trials(study)), search.trials), desc=study_name,
               unit="trial", disable=not progress or None)

    def objective(trial) -> float:
        point = {key: dim.suggest(trial, key) for key, dim in search.space.items()}
        config = make_config(point)
        trial.set_user_attr(CONFIG_ATTR, config.model_dump(mode="json"))
        trial.set_user_attr(POINT_ATTR, point)
        log.info("trial %d: %s", trial.number, point_label(point))
        try:
            output = train(config, on_epoch=EpochReporter(trial, config.train.valid_metric))
        except (KeyboardInterrupt, TrainingInterrupted):
            quiet.numbers.add(trial.number)
            log.warning("trial %d interrupted: failed in the study, drawn again when the search resumes", trial.number)
            raise
        except MP4SRError:  # a bad file or setting: its message is the report, not Optuna's traceback
            quiet.numbers.add(trial.number)
            raise
        trial.set_user_attr("best_epoch", output.result.best_epoch)
        trial.set_user_attr("valid", output.result.valid)
        return output.result.valid[config.train.valid_metric]

    def after(study, trial) -> None:
        bar.n = min(len(finished_trials(study)), search.trials)
        best = best_trial(study)
        if best is not None:
            bar.set_postfix_str(f"best {best.value:.4f} (trial {best.number})")
            if best.number == trial.number and best_file is not None:
                write_best(best, best_file, study.study_name)
        bar.refresh()
        if trial.state.name == "PRUNED":
            log.info("trial %d pruned after epoch %d", trial.number, trial.last_step)
        else:
            log.info("trial %d finished: valid %.4f", trial.number, trial.value)
        if on_trial is not None:
            on_trial()

    quiet = _QuietFailedTrials()
    optuna_log = logging.getLogger("optuna.study._optimize")
    optuna_log.addFilter(quiet)
    try:
        while len(finished_trials(study)) < search.trials:
            study.optimize(objective, n_trials=1, callbacks=[after], gc_after_trial=False)
    finally:
        optuna_log.removeFilter(quiet)
        bar.close()
    wait_for_running(study)
    best = best_trial(study)
    if best is not None and best_file is not None:
        write_best(best, best_file, study.study_name)
    return outcome(study, best, best_file)


class _QuietFailedTrials(logging.Filter):
    """Optuna logs a failed trial with the whole traceback of where it stopped; for a trial stopped by
    Ctrl-C or a signal the search says it in one line instead, and for one stopped by a bad file or
    setting the error's own message (printed by whoever catches it) is the report."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(f"Trial {number} failed") for number in self.numbers)


def best_trial(study):
    """The completed trial with the highest value (the earliest of equals), or None."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def wait_for_running(study, poll: float = 5.0) -> None:
    """Wait for the trials other processes still run: the best trial is known once they finish (a
    trial whose process died is marked failed by the heartbeat)."""
    from optuna.storages import fail_stale_trials

    while True:
        with _quiet_experimental(require_optuna()):
            fail_stale_trials(study)
        if not running_trials(study):
            return
        time.sleep(poll)


def outcome(study, best, best_file: Path | None) -> TuneOutcome:
    if best is None:
        return TuneOutcome(study.study_name, len(finished_trials(study)), None, {}, None, None)
    return TuneOutcome(study.study_name, len(finished_trials(study)), best.value, best.user_attrs[POINT_ATTR],
                       best.user_attrs[CONFIG_ATTR], best_file)


def write_best(trial, path: Path, study_name: str) -> None:
    """The trial's config as a file ``mp4sr train --config`` takes (written whole, then renamed)."""
    config = trial.user_attrs[CONFIG_ATTR]
    build_config(RunConfig, base=config)  # still a valid RunConfig
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# the best trial ({trial.number}) of study {study_name}: validation {trial.value:.6f}\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(config, sort_keys=False))
    tmp.replace(path)


def load_existing(storage: str, study_name: str):
    """The study ``study_name`` in ``storage``, or None when there is none."""
    optuna = require_optuna()
    try:
        return optuna.load_study(study_name=study_name, storage=_storage(storage))
    except KeyError:
        return None


def running_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def read_outcome(storage: str, study_name: str, trials: int) -> TuneOutcome | None:
    """The outcome of a finished search (``trials`` finished and none running), or None when the
    study does not exist or is not finished; trains nothing."""
    study = load_existing(storage, study_name)
    if study is None or len(finished_trials(study)) < trials or running_trials(study):
        return None
    return outcome(study, best_trial(study), None)
