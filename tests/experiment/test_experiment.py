"""`mp4sr experiment`: the file, the plan, resumption that redoes nothing finished, tables and plots."""

import json
import os
import shutil
import socket
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mp4sr.errors import ConfigError
from mp4sr.experiment import load_spec, make_plan, run_experiment
from mp4sr.experiment import runner

TINY = {
    "name": "tiny",
    "datasets": ["amazon-scientific-mm"],
    "seeds": [1, 2],
    "defaults": {"train": {"epochs": 1, "batch_size": 1024, "progress": False, "threads": 1}},
    "reference": "mp4sr",
    "metrics": ["recall@10", "ndcg@10"],
    "models": [
        "pop",
        {"name": "sasrec", "params": {"hidden": 16, "ffn": 32}, "grid": {"train.lr": [1e-3, 1e-2]}},
        {"name": "gru4rec", "params": {"embedding": 16, "hidden": 16}},
        {"name": "mp4sr", "params": {"hidden": 16, "ffn": 32}, "shared": {"params": {"hidden": 16, "ffn": 32}},
         "pretrain": {}},
        {"name": "mp4sr-frozen", "extends": "mp4sr", "params": {"freeze_encoder": True}},
        {"name": "mp4sr-no-pt", "extends": "mp4sr", "pretrain": None},
    ],
}
# per seed: pop, sasrec x 2 lr, gru4rec, one shared pre-training, 3 MP4SR fine-tunings
RUNS_PER_SEED = 8


def _write(path, tree):
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ file and plan


def test_spec_resolves_extends_roles_and_base(tmp_path):
    _write(tmp_path / "tiny.yaml", TINY)
    (tmp_path / "reduced.yaml").write_text(textwrap.dedent("""
        base: tiny.yaml
        seeds: [7]
        datasets: [{name: amazon-scientific-mm, cold_items: 0.2}]
    """))
    spec = load_spec(tmp_path / "reduced.yaml")
    entries = {e.name: e for e in spec.models}
    assert spec.seeds == [7] and spec.datasets[0].key == "amazon-scientific-mm-cold20"
    assert entries["mp4sr"].role == "reference" and entries["sasrec"].role == "baseline"
    assert entries["mp4sr-frozen"].role == "ablation" and entries["mp4sr-frozen"].model == "mp4sr"
    assert entries["mp4sr-frozen"].stage["params"] == {"hidden": 16, "ffn": 32, "freeze_encoder": True}
    assert entries["mp4sr-no-pt"].pretrain is None and entries["mp4sr"].pretrain == {}
    assert len(entries["sasrec"].grid_points()) == 2


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs" / "experiments").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_experiment_files_plan(path, tmp_path):
    from mp4sr.experiment.spec import search_tasks, select

    spec = load_spec(path)
    tasks = search_tasks(spec, tmp_path)
    for task in tasks:  # every search's space is made of the entry's settings
        task.make_config({key: dim.first() for key, dim in task.search.space.items()})
    tuned = {(t.entry, t.dataset.key): {key: dim.first() for key, dim in t.search.space.items()} for t in tasks}
    plan = make_plan(spec, tmp_path, tuned=tuned)  # validates every entry's settings, model parameters included
    entries = {e.name for e in spec.models}
    assert plan.runs and {c.entry for c in plan.cells} == entries
    rows = {e.name: len(spec.datasets if e.datasets is None else select(spec, datasets=e.datasets).datasets)
            for e in spec.models}
    assert len(plan.cells) == len(spec.seeds) * sum(
        rows[e.name] * (len(e.grid_points()) if spec.search else 1) for e in spec.models)


def test_plan_shares_pretraining_and_keys_do_not_depend_on_the_folder(tmp_path):
    spec = load_spec(_write(tmp_path / "tiny.yaml", TINY))
    plan = make_plan(spec, tmp_path / "a")
    assert len(plan.runs) == 2 * RUNS_PER_SEED
    assert len(plan.cells) == 2 * (RUNS_PER_SEED - 1)
    pre = [r for r in plan.runs if r.stage == "pretrain"]
    assert len(pre) == 2 and pre[0].config.params["stage"] == "pretrain" and pre[0].config.train.epochs == 1
    users = [r for r in plan.runs if r.pretrain_key == pre[0].key]
    assert {r.entry for r in users} == {"mp4sr", "mp4sr-frozen"}
    assert users[0].config.init_from == str(tmp_path / "a" / pre[0].key / "best.pt")
    assert users[0].config.train.weight_decay == 1e-3  # MP4SR's fine-tuning defaults apply under the file
    other = make_plan(spec, tmp_path / "b", overrides=["train.progress=true"])
    assert [r.key for r in other.runs] == [r.key for r in plan.runs]
    changed = make_plan(spec, tmp_path / "a", overrides=["train.epochs=2"])
    assert not {r.key for r in changed.runs} & {r.key for r in plan.runs}


def test_seeds_and_dataset_rows_narrow_the_plan_to_the_same_runs(tmp_path):
    from mp4sr.experiment.spec import search_tasks, select

    tree = {**TINY, "seeds": [1, 2, 3], "datasets": [
        {"name": "amazon-scientific-mm", "protocol": "history_kept"},
        {"name": "amazon-scientific-mm", "protocol": "history_excluded"},
        {"name": "amazon-scientific-mm", "cold_items": 0.2}]}
    tree["models"] = [*TINY["models"], {"name": "sasrec-tuned", "model": "sasrec", "params": {"hidden": 16, "ffn": 32},
                                        "search": {"trials": 2, "space": {"train.lr": {"choice": [1e-3, 1e-2]}}}}]
    spec = load_spec(_write(tmp_path / "tiny.yaml", tree))
    whole = make_plan(spec, tmp_path)
    narrow = select(spec, seeds=[3, 2], datasets=["amazon-scientific-mm"])
    assert narrow.seeds == [2, 3]  # the file's order
    assert [d.key for d in narrow.datasets] == ["amazon-scientific-mm", "amazon-scientific-mm-history-excluded"]
    part = make_plan(narrow, tmp_path)
    assert part.runs and {r.key for r in part.runs} <= {r.key for r in whole.runs}
    assert {c.seed for c in part.cells} == {2, 3} and {c.dataset for c in part.cells} == {
        "amazon-scientific-mm", "amazon-scientific-mm-history-excluded"}
    assert len(part.cells) == len([c for c in whole.cells if c.seed in (2, 3) and "cold" not in c.dataset])
    # a search keeps the whole file's first seed, so a part of the seeds tunes the same study
    assert [t.study for t in search_tasks(narrow, tmp_path)] == [
        t.study for t in search_tasks(spec, tmp_path) if "cold" not in t.dataset.key]
    assert select(spec) is spec
    with pytest.raises(ConfigError, match="--seeds: 7 not among"):
        select(spec, seeds=[7])
    with pytest.raises(ConfigError, match="rows: amazon-scientific-mm, amazon-scientific-mm-history-excluded"):
        select(spec, datasets=["amazon-beauty"])


def test_an_entry_runs_on_the_dataset_rows_it_names(tmp_path):
    from mp4sr.experiment.spec import search_tasks

    rows = [{"name": "amazon-scientific-mm", "protocol": "history_kept"},
            {"name": "amazon-scientific-mm", "protocol": "history_excluded"},
            {"name": "amazon-scientific-mm", "cold_items": 0.2}]
    probe = {"name": "sasrec-probe", "extends": "sasrec", "datasets": ["amazon-scientific-mm"]}
    tuned = {"name": "sasrec-tuned", "model": "sasrec", "datasets": ["amazon-scientific-mm-cold20"],
             "search": {"trials": 2, "space": {"train.lr": {"choice": [1e-3, 1e-2]}}}}
    tree = {**TINY, "seeds": [1], "datasets": rows,
            "models": [*TINY["models"], probe, {"name": "sasrec-probe-2", "extends": "sasrec-probe"},
                       {"name": "sasrec-everywhere", "extends": "sasrec-probe", "datasets": None}, tuned]}
    spec = load_spec(_write(tmp_path / "tiny.yaml", tree))
    whole = make_plan(spec, tmp_path)
    on = {e: {c.dataset for c in whole.cells if c.entry == e} for e in ("sasrec", "sasrec-probe", "sasrec-probe-2",
                                                                          "sasrec-everywhere")}
    everywhere = {"amazon-scientific-mm", "amazon-scientific-mm-history-excluded", "amazon-scientific-mm-cold20"}
    # the row of the other protocol comes with the one named, as the two share their runs; extends inherits
    assert on["sasrec"] == on["sasrec-everywhere"] == everywhere
    assert on["sasrec-probe"] == on["sasrec-probe-2"] == everywhere - {"amazon-scientific-mm-cold20"}
    assert [t.dataset.key for t in search_tasks(spec, tmp_path)] == ["amazon-scientific-mm-cold20"]
    # the runs it keeps are the ones the entry planned on every row, with the same keys
    unrestricted = make_plan(load_spec(_write(tmp_path / "all.yaml", {**tree, "models": [*TINY["models"],
                                                                                       {**probe, "datasets": None}]})),
                             tmp_path)
    probe_keys = {c.key for c in whole.cells if c.entry == "sasrec-probe"}
    assert probe_keys < {c.key for c in unrestricted.cells if c.entry == "sasrec-probe"}
    with pytest.raises(ConfigError, match="entry 'sasrec-probe' names dataset rows amazon-beauty that the file does "
                                          "not have; rows: amazon-scientific-mm, "):
        load_spec(_write(tmp_path / "bad.yaml", {**tree, "models": [*TINY["models"], {**probe, "datasets": ["amazon-beauty"]}]}))


def test_pretraining_on_another_dataset(tmp_path):
    source = {"dataset": "amazon-scientific", "data": {"exclude_users_of": ["amazon-scientific-mm"]}}
    tree = {**TINY, "seeds": [1], "models": [{"name": "mp4sr", "pretrain": source}]}
    plan = make_plan(load_spec(_write(tmp_path / "transfer.yaml", tree)), tmp_path)
    pre, final = plan.runs
    assert (pre.stage, pre.dataset.name, pre.config.dataset) == ("pretrain", "amazon-scientific", "amazon-scientific")
    assert pre.config.data.exclude_users_of == ["amazon-scientific-mm"]
    assert (final.dataset.name, final.config.data.exclude_users_of) == ("amazon-scientific-mm", [])
    assert final.config.init_from == str(tmp_path / pre.key / "best.pt")
    here = make_plan(load_spec(_write(tmp_path / "here.yaml", {**tree, "models": [{"name": "mp4sr", "pretrain": {}}]})),
                     tmp_path)
    assert here.runs[0].dataset.name == "amazon-scientific-mm" and here.runs[0].key != pre.key
    wrong = {**tree, "models": [{"name": "mp4sr", "shared": {"dataset": "amazon-scientific"}}]}
    with pytest.raises(ConfigError, match="only a pre-training stage"):
        make_plan(load_spec(_write(tmp_path / "wrong.yaml", wrong)), tmp_path)


def test_keys_of_stored_runs_stay_the_same(tmp_path):
    """A run's key names its folder: if keys change, resuming retrains every stored run. Settings added
    later are left out of the key at their default, so this key is the one it has always been."""
    from mp4sr.experiment.spec import run_key

    run = make_plan(load_spec(_write(tmp_path / "tiny.yaml", {**TINY, "seeds": [1]})), tmp_path).runs[1]
    assert run.entry == "sasrec" and run.key == "d1863abd6ffa"
    data = run.config.data.model_copy(update={"exclude_users_of": ["amazon-scientific"]})
    assert run_key(run.config.model_copy(update={"data": data}), run.dataset, run.pretrain_key) != run.key


def test_mistakes_fail_before_anything_trains(tmp_path):
    bad = {**TINY, "models": [{"name": "sasrec", "params": {"hiden": 3}}]}
    with pytest.raises(ConfigError, match="hiden"):
        make_plan(load_spec(_write(tmp_path / "bad.yaml", bad)), tmp_path)
    with pytest.raises(ConfigError, match="not defined above"):
        load_spec(_write(tmp_path / "bad2.yaml", {**TINY, "models": [{"name": "x", "extends": "y"}]}))
    with pytest.raises(ConfigError, match="--only"):
        make_plan(load_spec(_write(tmp_path / "t.yaml", TINY)), tmp_path, only=["nope"])


# ------------------------------------------------------------------------------------------ running


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny experiment, interrupted after two trainings, then resumed to the end."""
    folder = tmp_path_factory.mktemp("experiment")
    path = _write(folder / "tiny.yaml", TINY)
    out = folder / "out"
    calls = []
    real = runner.train_run

    def counting(config, out_dir, **kw):
        calls.append(out_dir.name)
        if len(calls) == 3 and not resumed:
            raise KeyboardInterrupt  # a kill in the middle of the third training
        return real(config, out_dir, **kw)

    resumed = False
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "train_run", counting)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(path, out)
        first = list(calls)
        resumed = True
        outcome = run_experiment(path, out)
        second = calls[len(first):]
        again = run_experiment(path, out)
    return {"out": out, "first": first, "second": second, "outcome": outcome, "again": again, "calls": calls}


def test_resuming_redoes_nothing_that_finished(finished):
    first, second = finished["first"], finished["second"]
    assert len(first) == 3
    assert first[:2] == [k for k in first[:2] if k not in second]  # the two finished runs were not redone
    assert second[0] == first[2]  # the interrupted one was
    assert len(second) == 2 * RUNS_PER_SEED - 2
    assert finished["outcome"].trained == len(second) and finished["outcome"].missing == 0
    assert finished["again"].trained == 0 and len(finished["calls"]) == len(first) + len(second)
    for key in first[:2] + second:
        folder = finished["out"] / "runs" / key
        written = {p.name for p in folder.iterdir()}
        assert {"run.json", "metrics.json", "epochs.jsonl", "test_ranks.npy", "config.yaml"} <= written
        assert not (folder / "last.pt").exists()


def test_finished_runs_of_another_experiment_are_reused(finished, tmp_path):
    """An experiment that lists another's output under ``reuse`` copies the runs they share (same key)
    instead of training them, fine-tunings' pre-training included, and trains only the rest."""
    source = finished["out"]
    tree = {**TINY, "name": "other", "reuse": [str(source)],
            "models": [TINY["models"][0], TINY["models"][3], TINY["models"][5],
                       {"name": "sasrec-wide", "model": "sasrec", "params": {"hidden": 24, "ffn": 48}}]}
    path = _write(tmp_path / "other.yaml", tree)
    calls = []
    real = runner.train_run
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "train_run", lambda config, out_dir, **kw: calls.append(out_dir.name) or real(config, out_dir, **kw))
        outcome = run_experiment(path, tmp_path / "out")
    plan = make_plan(load_spec(path), tmp_path / "out" / "runs")
    shared = {r.key for r in plan.runs if r.entry != "sasrec-wide"}
    assert len(calls) == 2 and not shared & set(calls)  # sasrec-wide, once per seed
    assert outcome.trained == 2 and outcome.missing == 0
    for key in shared:
        copied, original = tmp_path / "out" / "runs" / key, source / "runs" / key
        assert (copied / "run.json").is_file()
        assert (copied / "metrics.json").read_text() == (original / "metrics.json").read_text()
    ours = pd.read_csv(tmp_path / "out" / "results.csv").set_index("entry")
    theirs = pd.read_csv(source / "results.csv").set_index("entry")
    assert ours.loc["mp4sr", "ndcg@10_mean"] == theirs.loc["mp4sr", "ndcg@10_mean"]


def _archive_spec(tmp_path, models, name="kept"):
    tree = {**TINY, "name": name, "seeds": [1], "archive": str(tmp_path / "archive"), "models": models}
    return _write(tmp_path / f"{name}.yaml", tree)


def _counting_runs(calls):
    real = runner.train_run
    return lambda config, out_dir, **kw: calls.append(out_dir.name) or real(config, out_dir, **kw)


def test_an_archive_keeps_the_records_of_finished_runs_for_a_new_checkout(tmp_path):
    """Runs are recorded in the archive as they finish (no checkpoints, ranks as int32); a fresh output
    folder with the same archive trains nothing and reports the same numbers."""
    path = _archive_spec(tmp_path, [TINY["models"][0], TINY["models"][3]])
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "train_run", _counting_runs(calls))
        first = run_experiment(path, tmp_path / "first")
        assert len(calls) == 3  # pop, the pre-training, the fine-tuning
        again = run_experiment(path, tmp_path / "second")  # a new checkout: only the archive is there
    assert again.trained == 0 and len(calls) == 3 and again.missing == 0
    for key in calls:
        record, run = tmp_path / "archive" / "runs" / key, tmp_path / "first" / "runs" / key
        assert (record / "run.json").is_file() and not list(record.glob("*.pt"))
        assert {p.name for p in run.glob("test_ranks*.npy")} == {p.name for p in record.glob("test_ranks*.npy")}
        for ranks in record.glob("test_ranks*.npy"):
            kept = np.load(ranks)
            assert kept.dtype == np.int32 and (kept == np.load(run / ranks.name)).all()
    ours = pd.read_csv(tmp_path / "second" / "results.csv").set_index("entry")
    theirs = pd.read_csv(first.out / "results.csv").set_index("entry")
    assert ours.loc["mp4sr", "ndcg@10_mean"] == theirs.loc["mp4sr", "ndcg@10_mean"]


def test_the_report_and_the_status_read_the_archive_of_a_new_checkout(tmp_path):
    """--report-only and --status in an output folder that holds no runs count the archive's records:
    the report has every row, copies nothing and trains nothing."""
    path = _archive_spec(tmp_path, [TINY["models"][0], TINY["models"][3]])
    first = run_experiment(path, tmp_path / "first")
    report = run_experiment(path, tmp_path / "fresh", train=False)
    assert report.trained == 0 and report.missing == 0
    assert not (tmp_path / "fresh" / "runs").exists() or not list((tmp_path / "fresh" / "runs").iterdir())
    ours = pd.read_csv(tmp_path / "fresh" / "results.csv").set_index("entry")
    theirs = pd.read_csv(first.out / "results.csv").set_index("entry")
    assert set(ours.index) == set(theirs.index) == {"pop", "mp4sr"}
    assert ours.loc["mp4sr", "ndcg@10_mean"] == theirs.loc["mp4sr", "ndcg@10_mean"]
    _, rows = runner.experiment_status(path, tmp_path / "other")
    assert all(row.finished == row.planned == 1 for row in rows) and len(rows) == 3
    shutil.rmtree(tmp_path / "archive")
    assert run_experiment(path, tmp_path / "empty", train=False).missing == 2


def test_a_new_fine_tuning_trains_again_a_pre_training_known_only_from_its_record(tmp_path):
    """The archive holds no checkpoints: a fine-tuning added later has its pre-training trained again
    (the same key, so the same settings and seed) instead of failing on a missing best.pt."""
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "train_run", _counting_runs(calls))
        run_experiment(_archive_spec(tmp_path, [TINY["models"][3]]), tmp_path / "first")
        pretrain, finetune = calls
        run_experiment(_archive_spec(tmp_path, [TINY["models"][3]]), tmp_path / "second")  # copies the records
        assert len(calls) == 2 and not (tmp_path / "second" / "runs" / pretrain / "best.pt").exists()
        more = _archive_spec(tmp_path, [TINY["models"][3], TINY["models"][4]])
        outcome = run_experiment(more, tmp_path / "second")
    assert calls[2:] == [pretrain, calls[3]] and calls[3] not in (pretrain, finetune)
    assert outcome.trained == 2 and outcome.missing == 0
    assert (tmp_path / "second" / "runs" / pretrain / "best.pt").is_file()


def test_the_searches_study_is_kept_in_the_archive(tmp_path):
    import sqlite3

    db = tmp_path / "out" / "tune.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as con:
        con.execute("create table trials (value real)")
        con.execute("insert into trials values (0.5)")
    con.close()
    assert runner.copy_study(db, tmp_path / "archive" / "tune.db")
    with sqlite3.connect(tmp_path / "archive" / "tune.db") as con:
        assert con.execute("select value from trials").fetchall() == [(0.5,)]
    con.close()
    assert not runner.copy_study(tmp_path / "nothing.db", tmp_path / "archive" / "other.db")


def test_an_unfinished_run_is_not_reused(tmp_path):
    other = tmp_path / "other" / "runs" / "abc"
    other.mkdir(parents=True)
    (other / "last.pt").write_bytes(b"")  # interrupted there: no run.json
    runs = tmp_path / "mine" / "runs"
    runs.mkdir(parents=True)
    assert runner.reuse_run("abc", runs, [tmp_path / "other"]) is None
    assert not (runs / "abc").exists()


def test_tables_and_plots(finished):
    out, files = finished["out"], finished["outcome"].files
    summary = pd.read_csv(out / "results.csv")
    assert list(summary["entry"]) == ["pop", "sasrec", "gru4rec", "mp4sr", "mp4sr-frozen", "mp4sr-no-pt"]
    assert (summary["n_seeds"] == 2).all()
    assert summary.loc[summary["entry"] == "sasrec", "point"].iloc[0] in ("train.lr=0.001", "train.lr=0.01")
    assert {"recall@10_mean", "recall@10_std", "ndcg@10_mean"} <= set(summary.columns)
    sig = pd.read_csv(out / "significance.csv")
    assert set(sig["metric"]) == {"recall@10", "ndcg@10"} and (sig["reference"] == "mp4sr").all()
    assert set(sig["best_baseline"]) <= {"pop", "sasrec", "gru4rec"} and (sig["n_users"] == 2928).all()
    cold = pd.read_csv(out / "coldstart.csv")
    assert set(cold["by"]) == {"item_count", "history"} and len(set(cold["entry"])) == 6
    text = (out / "results.md").read_text()
    assert "| mp4sr | reference | 2 |" in text and "±" in text and "## Cold start" in text
    assert "![curves_amazon-scientific-mm](plots/curves_amazon-scientific-mm.png)" in text  # learning curves
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["coldstart_amazon-scientific-mm.png", "curves_amazon-scientific-mm.png",
                    "metrics_amazon-scientific-mm.png"]
    assert all(files[k].stat().st_size > 1000 for k in files if k.startswith("plot_"))


def test_report_only_and_only(finished, tmp_path):
    path = _write(tmp_path / "tiny.yaml", TINY)
    outcome = run_experiment(path, finished["out"], only=["pop", "sasrec"], train=False)
    assert outcome.trained == 0 and outcome.missing == 0
    assert list(pd.read_csv(finished["out"] / "results.csv")["entry"]) == ["pop", "sasrec"]
    record = json.loads(next((finished["out"] / "runs").glob("*/run.json")).read_text())
    assert {"key", "stage", "entry", "dataset", "seed", "seconds"} <= set(record)


def test_cold_item_datasets_are_built_once(scientific_mm):
    from mp4sr.experiment.spec import DatasetSpec

    cache = runner.DatasetCache()
    cold = DatasetSpec(name="amazon-scientific-mm", cold_items=0.2)
    first = cache.get(cold)
    assert cache.get(cold) is first and first.n_users < scientific_mm.n_users
    assert first.n_items == scientific_mm.n_items
    assert cache.get(DatasetSpec(name="amazon-scientific-mm")).n_users == scientific_mm.n_users


def test_claims_keep_two_processes_off_the_same_run(tmp_path):
    import subprocess as sp

    assert runner.claim(tmp_path, "abc")
    assert not runner.claim(tmp_path, "abc")  # held by a live process (this one)
    runner.release(tmp_path, "abc")
    assert runner.claim(tmp_path, "abc")
    dead = sp.Popen(["true"])
    dead.wait()
    (tmp_path / "def.claim").write_text(f"{socket.gethostname()} {dead.pid}")
    assert runner.claim(tmp_path, "def")  # its process is gone: taken over
    (tmp_path / "ghi.claim").write_text("another-host 1")
    assert not runner.claim(tmp_path, "ghi")  # cannot tell whether a process elsewhere lives


def test_parallel_jobs_train_every_run_once(tmp_path):
    tree = {**TINY, "seeds": [1], "models": [TINY["models"][0], {**TINY["models"][1], "grid": {}},
                                             TINY["models"][3], TINY["models"][5]]}
    path = _write(tmp_path / "tiny.yaml", tree)
    outcome = run_experiment(path, tmp_path / "out", jobs=2)
    runs = tmp_path / "out" / "runs"
    records = [json.loads(p.read_text()) for p in runs.glob("*/run.json")]
    assert len(records) == 5 and outcome.missing == 0  # pop, sasrec, one pre-training, two fine-tunings
    assert not list(runs.glob("*.claim"))
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == 4


def test_an_interrupted_run_continues_where_it_stopped(tmp_path):
    import signal

    from mp4sr.train.trainer import Trainer, TrainingInterrupted

    sasrec = {**TINY["models"][1], "grid": {}}
    tree = {**TINY, "seeds": [1], "models": [sasrec], "defaults": {"train": {**TINY["defaults"]["train"], "epochs": 3}}}
    path = _write(tmp_path / "one.yaml", tree)
    epochs, stop_after = [], {2}
    real = Trainer.train_epoch

    def train_epoch(self, optimizer, rng, epoch, position=None):
        loss = real(self, optimizer, rng, epoch, position)
        epochs.append(epoch)
        if epoch in stop_after:
            stop_after.clear()
            self._signal = signal.SIGINT  # as if Ctrl-C came during this epoch
        return loss

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "train_epoch", train_epoch)
        with pytest.raises(TrainingInterrupted):
            run_experiment(path, tmp_path / "out")
        folder, rows = runner.experiment_status(path, tmp_path / "out")
        assert [(r.entry, r.planned, r.finished, r.interrupted) for r in rows] == [("sasrec", 1, 0, 1)]
        key = make_plan(load_spec(path), (folder / "runs").resolve()).runs[0].key
        (folder / "runs" / f"{key}.claim").write_text(f"{socket.gethostname()} {os.getpid()}")
        assert runner.experiment_status(path, tmp_path / "out")[1][0].running == 1
        (folder / "runs" / f"{key}.claim").unlink()

        outcome = run_experiment(path, tmp_path / "out")
        assert epochs == [1, 2, 3] and outcome.trained == 1 and outcome.missing == 0
        record = json.loads((folder / "runs" / key / "run.json").read_text())
        assert record["resumed"] is True and record["epochs"] == 3
        assert runner.experiment_status(path, tmp_path / "out")[1][0].finished == 1

        run_experiment(path, tmp_path / "straight")  # the same run, never interrupted
    resumed = json.loads((folder / "runs" / key / "metrics.json").read_text())
    straight = json.loads((tmp_path / "straight" / "runs" / key / "metrics.json").read_text())
    assert resumed["test"] == pytest.approx(straight["test"], abs=1e-6)
    assert resumed["best_epoch"] == straight["best_epoch"]


def test_an_experiment_on_a_text_only_dataset(scientific_mm_with, tmp_path):
    """An experiment's MP4SR stages follow the data: on a dataset with text vectors and no images, the
    pre-training and the fine-tuning that starts from it both run on text."""
    folder = scientific_mm_with("scientific-text", (".text", ".feat1CLS"))
    tree = {**TINY, "datasets": [{"name": str(folder), "label": "scientific-text"}], "seeds": [1],
            "models": ["pop", {"name": "mp4sr", "shared": {"params": {"hidden": 16, "ffn": 32, "layers": 1}}, "pretrain": {}}]}
    outcome = run_experiment(_write(tmp_path / "text.yaml", tree), tmp_path / "out")
    assert outcome.trained == 3 and outcome.missing == 0
    stages = {}
    for done in (tmp_path / "out" / "runs").glob("*/run.json"):
        record = json.loads(done.read_text())
        if record["model"] == "mp4sr":
            ckpt = torch.load(done.parent / "best.pt", map_location="cpu", weights_only=True)
            stages[record["stage"]] = ckpt["data_settings"]
    assert stages == {"pretrain": {"modalities": ["text"]}, "finetune": {"modalities": ["text"]}}
    assert "scientific-text" in outcome.files["results_md"].read_text()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs" / "experiments").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_files_keep_their_records_where_git_keeps_them(path):
    """The archive exists to be committed: git must not ignore what it records."""
    import shutil
    import subprocess

    root = Path(__file__).parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    spec = load_spec(path)
    assert spec.archive, f"{path.name} keeps no records (archive: results/<name>)"
    record = Path(spec.archive) / "runs" / "0123456789ab" / "run.json"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(record)], cwd=root).returncode == 0
    assert not ignored, f"git ignores {record}: the records of {path.name} would never be committed"
