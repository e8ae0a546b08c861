"""Hyper-parameter search: the study file, resumption, pruning, the best config, and the experiment runner."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mp4sr.cli import app
from mp4sr.config import RunConfig, build_config, deep_merge
from mp4sr.errors import ConfigError
from mp4sr.experiment import load_spec, run_experiment
from mp4sr.experiment.runner import experiment_status
from mp4sr.experiment.search import Dimension, SearchSpec, load_search
from mp4sr.experiment.tune import EpochReporter, check_space, finished_trials, open_study
from mp4sr.train.trainer import EpochRecord

optuna = pytest.importorskip("optuna")
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the tests ask trials by hand
FAST = ["--set", "train.epochs=2", "--set", "train.batch_size=4096", "--set", "train.threads=1",
        "--set", "train.progress=false", "--set", "params.ffn=32"]
SPACE = {"trials": 2, "space": {"train.lr": {"log_uniform": [1.0e-3, 1.0e-2]}, "params.hidden": {"choice": [8, 16]}}}


@pytest.fixture(scope="module")
def tiny_data(scientific_mm, tmp_path_factory):
    """The first 300 users of amazon-scientific-mm as an interaction table (a dataset folder)."""
    data = scientific_mm
    users = np.repeat(data.user_ids[:300], data.sequences.lengths[:300])
    items = data.sequences.items[: len(users)]
    folder = tmp_path_factory.mktemp("data") / "tiny"
    folder.mkdir()
    pd.DataFrame({"user_id": users, "item_id": data.items.ids[items],
                  "timestamp": np.arange(len(users))}).to_csv(folder / "interactions.csv", index=False)
    return folder


def _tune(tiny_data, out, *extra):
    result = CliRunner().invoke(app, ["tune", "--model", "sasrec", "--dataset", str(tiny_data),
                                      "--space", str(out.parent / "space.yaml"), "--out", str(out), *FAST, *extra])
    assert result.exit_code == 0, result.output
    return optuna.load_study(study_name=f"sasrec-{tiny_data.name}", storage=f"sqlite:///{out / 'study.db'}")


def test_search_writes_its_study_resumes_it_and_its_best_config_trains(tiny_data, tmp_path):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    out = tmp_path / "tune"
    study = _tune(tiny_data, out)
    assert [t.number for t in finished_trials(study)] == [0, 1] and (out / "study.db").is_file()
    first = [t.params for t in study.trials]

    study = _tune(tiny_data, out, "--trials", "3")  # the same command with a larger budget continues it
    trials = finished_trials(study)
    assert [t.number for t in trials] == [0, 1, 2] and [t.params for t in trials[:2]] == first
    assert trials[2].params != trials[0].params  # a resumed study draws anew
    assert all(len(t.intermediate_values) == 2 for t in trials)  # every epoch's validation metric

    best = max(trials, key=lambda t: t.value)
    config = build_config(RunConfig, out / "best.yaml")
    assert config.train.lr == best.params["train.lr"] and config.params["hidden"] == best.params["params.hidden"]
    result = CliRunner().invoke(app, ["train", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["valid"]["ndcg@10"] == pytest.approx(best.value)  # the trial, trained again


def _record(epoch, value):
    return EpochRecord(epoch, 1.0, 0.0, 0.0, {"ndcg@10": value})


def test_median_pruner_stops_a_trial_below_the_finished_ones(tmp_path):
    search = SearchSpec(space={"train.lr": {"uniform": [0.0, 1.0]}}, prune_startup=2, prune_warmup=2)
    study = open_study(f"sqlite:///{tmp_path / 's.db'}", "s", search)
    for value in (0.5, 0.6):
        study.add_trial(optuna.trial.create_trial(
            value=value, params={"train.lr": value}, distributions={"train.lr": optuna.distributions.FloatDistribution(0, 1)},
            intermediate_values={1: value, 2: value, 3: value}))
    good, bad = EpochReporter(study.ask(), "ndcg@10"), EpochReporter(study.ask(), "ndcg@10")
    for epoch in (1, 2, 3):
        good(_record(epoch, 0.7))
    bad(_record(1, 0.1))  # below the median, but within the epochs every trial trains
    with pytest.raises(optuna.TrialPruned, match="after epoch 2"):
        bad(_record(2, 0.1))


def test_sampler_draws_the_same_points_for_the_same_trial_numbers(tmp_path):
    search = SearchSpec(space={"train.lr": {"log_uniform": [1e-4, 1e-2]}, "params.hidden": {"choice": [8, 16, 32]}})

    def draws(name):
        study = open_study(f"sqlite:///{tmp_path / 'd.db'}", name, search)
        return [search.space["train.lr"].suggest(t, "train.lr") for t in (study.ask(), study.ask())]

    assert draws("a") == draws("b") and len(set(draws("c"))) == 2


def test_search_files_and_spaces_fail_before_training(tmp_path):
    (tmp_path / "bare.yaml").write_text("train.lr: {log_uniform: [1.0e-4, 1.0e-2]}\n")
    assert load_search(tmp_path / "bare.yaml", trials=7).trials == 7
    assert Dimension(choice=[["text"], ["text", "image"]]).first() == ["text"]
    for bad in ({"log_uniform": [0, 1]}, {"int": [3, 1]}, {"uniform": [0, 1], "choice": [1]}, {"choice": []}):
        with pytest.raises(ValueError):
            Dimension(**bad)
    (tmp_path / "typo.yaml").write_text("space: {lr: {uniform: [0, 1]}}\n")
    with pytest.raises(ConfigError, match="dotted setting"):
        load_search(tmp_path / "typo.yaml")
    search = SearchSpec(space={"params.hiden": {"choice": [8]}})
    with pytest.raises(ConfigError, match="hiden"):
        check_space(lambda point: _sasrec_config(point), search)


def _sasrec_config(point):
    from mp4sr.experiment.search import point_tree
    from mp4sr.models.base import parse_model_config

    config = build_config(RunConfig, base=point_tree(point), model="sasrec")
    parse_model_config(config.model, config.params)
    return config


def _experiment(tmp_path, tiny_data, **search):
    tree = {
        "name": "tuned", "datasets": [str(tiny_data)], "seeds": [1, 2], "reference": "sasrec",
        "metrics": ["ndcg@10"], "coldstart": False, "search": {"trials": 2, **search},
        "defaults": {"train": {"epochs": 1, "batch_size": 4096, "progress": False, "threads": 1},
                     "params": {"hidden": 8, "ffn": 16}},
        "models": [{"name": "sasrec", "search": {"train.lr": {"log_uniform": [1.0e-3, 1.0e-2]}}}],
    }
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_experiment_tunes_an_entry_then_runs_its_best_settings_with_every_seed(tmp_path, tiny_data):
    path = _experiment(tmp_path, tiny_data)
    outcome = run_experiment(path, tmp_path / "out", report=False)
    assert outcome.trained == 2  # the final runs; the trials are not runs of the tables
    tuned = yaml.safe_load((tmp_path / "out" / "tuned" / f"sasrec@{tiny_data.name}.yaml").read_text())
    finals = [json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").glob("*/run.json")]
    configs = [build_config(RunConfig, p.parent / "config.yaml") for p in (tmp_path / "out" / "runs").glob("*/run.json")]
    assert sorted(r["seed"] for r in finals) == [1, 2] and {c.train.lr for c in configs} == {tuned["train"]["lr"]}
    assert run_experiment(path, tmp_path / "out", report=False).trained == 0  # finished: nothing again
    _, rows = experiment_status(path, tmp_path / "out")
    assert [(r.stage, r.finished, r.planned) for r in rows] == [("search", 2, 2), ("finetune", 2, 2)]
    study = optuna.load_study(study_name=optuna.get_all_study_names(f"sqlite:///{tmp_path / 'out' / 'tune.db'}")[0],
                              storage=f"sqlite:///{tmp_path / 'out' / 'tune.db'}")
    assert (rows[0].best, rows[0].best_trial) == (study.best_value, study.best_trial.number)
    assert rows[0].seconds == pytest.approx(sum(t.duration.total_seconds() for t in study.trials))
    assert rows[1].best is None
    shown = CliRunner().invoke(app, ["experiment", str(path), "--out", str(tmp_path / "out"), "--status"])
    assert shown.exit_code == 0, shown.output
    assert f"{study.best_value:.4f}" in shown.output and "2 of 2 trials finished" in " ".join(shown.output.split())
    assert "planned once" not in shown.output
    study.ask()  # another process's trial past the budget: the runs wait for it, nothing is left to do
    shown = CliRunner().invoke(app, ["experiment", str(path), "--out", str(tmp_path / "out"), "--status"])
    search_row = next(line for line in shown.output.splitlines() if "search" in line)
    counts = [cell.strip() for cell in search_row.split("│")[2:]]  # past the dataset's (temporary) path
    assert "2/2" in counts and not any(cell.startswith("-") for cell in counts)
    assert "the runs of sasrec are planned once its search finishes" in " ".join(shown.output.split())


def test_the_archive_holds_every_finished_trial_while_the_search_goes_on(tmp_path, tiny_data, monkeypatch):
    """A search killed outright (no Ctrl-C, no cleanup) leaves its finished trials in the archive."""
    from mp4sr.experiment import runner

    tree = yaml.safe_load(_experiment(tmp_path, tiny_data).read_text())
    tree["archive"] = str(tmp_path / "archive")
    (tmp_path / "archived.yaml").write_text(yaml.safe_dump(tree))
    seen, train_run = [], runner.train_run

    def watching(config, *args, **kwargs):
        archived = tmp_path / "archive" / "tune.db"
        if archived.is_file():
            study = optuna.load_study(study_name=optuna.get_all_study_names(f"sqlite:///{archived}")[0],
                                      storage=f"sqlite:///{archived}")
            seen.append(len(finished_trials(study)))
        else:
            seen.append(0)
        return train_run(config, *args, **kwargs)

    monkeypatch.setattr(runner, "train_run", watching)
    run_experiment(tmp_path / "archived.yaml", tmp_path / "out", report=False)
    assert seen == [0, 1, 2, 2]  # two trials, then the final runs of seeds 1 and 2


def test_every_search_of_a_comparison_has_the_same_budget(tmp_path, tiny_data):
    tree = yaml.safe_load(_experiment(tmp_path, tiny_data).read_text())
    tree["models"].append({"name": "sasrec-big", "model": "sasrec", "search": {"trials": 5, "space": {
        "params.hidden": {"choice": [8, 16]}}}})
    (tmp_path / "unfair.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match="same"):
        load_spec(tmp_path / "unfair.yaml")
    tree["models"][1]["search"].pop("trials")  # the shared budget then applies to both
    (tmp_path / "fair.yaml").write_text(yaml.safe_dump(tree))
    assert [e.search.trials for e in load_spec(tmp_path / "fair.yaml").models] == [2, 2]


def test_a_search_stopped_by_ctrl_c_continues_with_a_fresh_trial(tiny_data, tmp_path, caplog):
    from mp4sr.data import load_dataset
    from mp4sr.experiment.search import point_tree
    from mp4sr.experiment.tune import tune
    from mp4sr.train import train_run

    dataset = load_dataset(tiny_data)
    base = build_config(RunConfig, model="sasrec", dataset=str(tiny_data), params={"hidden": 8, "ffn": 16},
                        train={"epochs": 1, "batch_size": 4096, "progress": False, "threads": 1})
    make_config = lambda point: build_config(RunConfig, base=deep_merge(base.model_dump(), point_tree(point)))  # noqa: E731
    search = SearchSpec(trials=2, space={"train.lr": {"log_uniform": [1e-3, 1e-2]}})
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def interrupted(config, on_epoch):
        def hook(record):
            raise KeyboardInterrupt  # Ctrl-C during the first epoch's bookkeeping
        return train_run(config, dataset=dataset, on_epoch=hook)

    optuna.logging.enable_propagation()  # Optuna's own warnings reach caplog
    try:
        with pytest.raises(KeyboardInterrupt), caplog.at_level(logging.INFO):
            tune(make_config, search, storage, "s", interrupted, progress=False)
    finally:
        optuna.logging.disable_propagation()
    said = [r.getMessage() for r in caplog.records]
    assert "trial 0 interrupted: failed in the study, drawn again when the search resumes" in said
    assert not any("failed" in m and m.startswith("Trial 0") for m in said)  # Optuna's traceback is not shown
    assert not any(r.exc_info for r in caplog.records)
    result = tune(make_config, search, storage, "s", lambda c, on_epoch: train_run(c, dataset=dataset, on_epoch=on_epoch),
                  best_file=tmp_path / "best.yaml", progress=False)
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert result.finished == 2 and (tmp_path / "best.yaml").is_file()


def test_two_processes_share_one_study(tiny_data, tmp_path):
    import subprocess
    import sys

    (tmp_path / "space.yaml").write_text(yaml.safe_dump({**SPACE, "trials": 3}))
    command = [sys.executable, "-m", "mp4sr", "tune", "--model", "sasrec", "--dataset", str(tiny_data),
               "--space", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "tune"), *FAST[:-2],
               "--set", "params.ffn=16", "--set", "train.epochs=1"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    study = optuna.load_study(study_name=f"sasrec-{tiny_data.name}", storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}")
    numbers = [t.number for t in finished_trials(study)]
    assert 3 <= len(numbers) <= 4 and len(set(numbers)) == len(numbers)  # one more at most: the other's last
    assert len({t.params["train.lr"] for t in study.trials}) == len(study.trials)  # no draw repeated


def test_a_missing_dataset_stops_the_search_before_its_study_is_made(tmp_path):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    result = CliRunner().invoke(app, ["tune", "--model", "sasrec", "--dataset", str(tmp_path / "nowhere"),
                                      "--space", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "tune"), *FAST])
    assert result.exit_code != 0 and "not found" in str(result.exception)
    assert not (tmp_path / "tune").exists()


def test_a_trial_stopped_by_a_bad_setting_is_reported_by_its_message_alone(tiny_data, tmp_path, caplog):
    from mp4sr.errors import DataError
    from mp4sr.experiment.tune import tune

    base = build_config(RunConfig, model="sasrec", dataset=str(tiny_data))
    search = SearchSpec(trials=1, space={"train.lr": {"log_uniform": [1e-3, 1e-2]}})

    def bad_file(config, on_epoch):
        raise DataError("items.csv line 7: no item id")

    optuna.logging.enable_propagation()
    try:
        with pytest.raises(DataError, match="line 7"), caplog.at_level(logging.INFO):
            tune(lambda point: base, search, f"sqlite:///{tmp_path / 'study.db'}", "s", bad_file, progress=False)
    finally:
        optuna.logging.disable_propagation()
    assert not any(r.getMessage().startswith("Trial 0 failed") or r.exc_info for r in caplog.records)
    assert [t.state.name for t in optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}").trials] == ["FAIL"]


def test_the_trials_of_a_search_read_the_dataset_once(tiny_data, tmp_path, monkeypatch):
    import mp4sr.data
    import mp4sr.data.loader
    from mp4sr.experiment import runner

    reads = []
    original = mp4sr.data.loader.load_dataset

    def counting(*args, **kwargs):
        reads.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(mp4sr.data, "load_dataset", counting)
    monkeypatch.setattr(mp4sr.data.loader, "load_dataset", counting)
    monkeypatch.setattr(runner, "load_dataset", counting)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    study = _tune(tiny_data, tmp_path / "tune")
    assert len(finished_trials(study)) == 2 and len(reads) == 1


def test_an_experiment_search_reads_the_dataset_with_its_column_names(tiny_data, tmp_path):
    """The trials read the dataset as the final runs do, with the experiment's data.columns."""
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    table = pd.read_csv(tiny_data / "interactions.csv").rename(columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts"})
    table.to_csv(renamed / "interactions.csv", index=False)
    tree = yaml.safe_load(_experiment(tmp_path, tiny_data).read_text())
    tree["datasets"] = [str(renamed)]
    tree["defaults"]["data"] = {"columns": {"user": "uid", "item": "iid", "time": "ts"}}
    (tmp_path / "renamed.yaml").write_text(yaml.safe_dump(tree))
    outcome = run_experiment(tmp_path / "renamed.yaml", tmp_path / "out", report=False)
    assert outcome.trained == 2
    _, rows = experiment_status(tmp_path / "renamed.yaml", tmp_path / "out")
    assert [(r.stage, r.finished) for r in rows] == [("search", 2), ("finetune", 2)]
