"""Experiments: a grid of models x datasets x seeds (x hyper-parameters), run and resumed run by run,
summarised in tables, significance tests and plots (``mp4sr experiment FILE.yaml``)."""

from mp4sr.experiment.runner import ExperimentOutcome, StatusRow, execute, experiment_status, run_experiment
from mp4sr.experiment.spec import ExperimentSpec, Plan, PlannedRun, load_spec, make_plan, run_key

__all__ = ["ExperimentOutcome", "ExperimentSpec", "Plan", "PlannedRun", "StatusRow", "execute", "experiment_status",
           "load_spec", "make_plan", "run_experiment", "run_key"]
