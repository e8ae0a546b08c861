import json
import re

import pytest
import yaml

from typer.testing import CliRunner

from mp4sr.cli import app

runner = CliRunner()


def test_datasets_lists_shared_data():
    result = runner.invoke(app, ["datasets"])
    assert result.exit_code == 0, result.output
    assert "amazon-scientific-mm" in result.output and "2,928" in result.output


def test_datasets_reads_tables_with_the_given_column_names(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "shop"
    folder.mkdir(parents=True)
    log = "".join(f"{u},{i}\n" for u in range(3) for i in range(6))
    (folder / "interactions.csv").write_text("uid,iid\n" + log)
    monkeypatch.setenv("MP4SR_DATA_DIR", str(tmp_path / "data"))
    result = runner.invoke(app, ["datasets"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "unreadable" in result.output and "data.columns.user" in result.output
    result = runner.invoke(app, ["datasets", "--set", "data.columns.user=uid", "--set", "data.columns.item=iid"],
                           env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "unreadable" not in result.output and "shop" in result.output and "18" in result.output
    result = runner.invoke(app, ["datasets", "--set", "train.lr=0.1"])
    assert result.exit_code != 0 and "data.* settings" in str(result.exception)


def test_train_pop_writes_metrics(tmp_path):
    out = tmp_path / "pop"
    result = runner.invoke(app, ["train", "--model", "pop", "--dataset", "amazon-scientific-mm", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {f"{m}@{k}" for m in ("recall", "ndcg", "mrr") for k in (5, 10, 20, 50)}
    assert 0 < metrics["test"]["recall@50"] < 1
    assert (out / "best.pt").is_file() and (out / "config.yaml").is_file()


def test_a_runs_config_file_trains_the_same_model(tmp_path):
    """`--config` of a run's config.yaml: its model and dataset hold unless --model / --dataset are given."""
    first, again = tmp_path / "first", tmp_path / "again"
    result = runner.invoke(app, ["train", "--model", "pop", "--dataset", "amazon-scientific-mm", "--out", str(first)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--config", str(first / "config.yaml"), "--out", str(again)])
    assert result.exit_code == 0, result.output
    assert "training pop on amazon-scientific-mm" in result.output
    assert json.loads((again / "metrics.json").read_text()) == json.loads((first / "metrics.json").read_text())


def test_unknown_dataset_is_a_clean_error(tmp_path):
    result = runner.invoke(app, ["train", "--dataset", "nope", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "not found" in str(result.exception)


def test_run_pretrains_on_another_dataset(tmp_path):
    out = tmp_path / "run"
    tiny = ["params.hidden=16", "params.ffn=32", "params.modalities=[image]", "train.epochs=1", "train.progress=false"]
    args = ["run", "--dataset", "amazon-scientific-mm", "--out", str(out), "--pretrain-dataset", "amazon-scientific",
            "--set", "features.text=null"]
    args += [a for kv in tiny for a in ("--set", kv)]
    args += [a for kv in tiny + ["data.exclude_users_of=[amazon-scientific-mm]"] for a in ("--pretrain-set", kv)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    pre = yaml.safe_load((out / "pretrain" / "config.yaml").read_text())
    assert pre["dataset"] == "amazon-scientific" and pre["data"]["exclude_users_of"] == ["amazon-scientific-mm"]
    fine = yaml.safe_load((out / "finetune" / "config.yaml").read_text())
    assert fine["dataset"] == "amazon-scientific-mm" and fine["init_from"] == str(out / "pretrain" / "best.pt")
    report = (out / "report.md").read_text()
    assert "test on amazon-scientific (without the users of amazon-scientific-mm)" in report


def test_experiment_status_reads_without_training(tmp_path):
    spec = {"name": "two", "datasets": ["amazon-scientific-mm"], "seeds": [1, 2], "models": ["pop", "sasrec"]}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    result = runner.invoke(app, ["experiment", str(path), "--out", str(out), "--status"])
    assert result.exit_code == 0, result.output
    assert "0 of 4 runs finished, 0 running;" in " ".join(result.output.split())
    assert not (out / "runs").exists()
    result = runner.invoke(app, ["experiment", str(path), "--out", str(out), "--status", "--only", "pop, sasrec"])
    assert result.exit_code == 0 and "0 of 4 runs finished" in " ".join(result.output.split())  # a comma-separated list of entries
    result = runner.invoke(app, ["experiment", str(path), "--out", str(out), "--only", "pop",
                                 "--set", "train.progress=false"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["experiment", str(path), "--out", str(out), "--status"])
    assert "2 of 4 runs finished" in " ".join(result.output.split()) and "2/2" in result.output
    result = runner.invoke(app, ["experiment", str(path), "--status", "--report-only"])
    assert result.exit_code != 0 and "--status only reads" in str(result.exception)
    result = runner.invoke(app, ["experiment", str(path), "--out", str(out), "--status", "--seeds", "2",
                                 "--datasets", "amazon-scientific-mm"])
    assert "1 of 2 runs finished" in " ".join(result.output.split()) and "1/1" in result.output
    result = runner.invoke(app, ["experiment", str(path), "--status", "--seeds", "two"])
    assert result.exit_code != 0 and "--seeds takes whole numbers" in str(result.exception)


def test_images_alone_and_no_content_at_all(scientific_mm_with, tmp_path, caplog):
    """A dataset with image vectors and no text trains MP4SR on images (and serves it); one with neither is
    an error that names the models that learn from interactions alone."""
    import logging

    import torch

    from mp4sr.models import REGISTRY
    from mp4sr.models.base import reads_content
    from mp4sr.serve import Recommender

    images = scientific_mm_with("scientific-images", (".feat3CLS",))
    tiny = ["params.hidden=16", "params.ffn=32", "params.layers=1", "train.epochs=1", "train.progress=false"]
    with caplog.at_level(logging.INFO, logger="mp4sr.models"):
        result = runner.invoke(app, ["finetune", "--dataset", str(images), "--out", str(tmp_path / "fine")]
                               + [a for kv in tiny for a in ("--set", kv)])
    assert result.exit_code == 0, result.output
    assert [r.getMessage() for r in caplog.records if r.name == "mp4sr.models"] == [
        "dataset 'scientific-images' has no text features: mp4sr runs on image only"]
    ckpt = torch.load(tmp_path / "fine" / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["data_settings"] == {"modalities": ["image"]} and set(ckpt["features"]) == {"image"}
    assert Recommender.load(tmp_path / "fine").modalities == ["image"]

    nothing = scientific_mm_with("scientific-ids", ())
    result = runner.invoke(app, ["pretrain", "--dataset", str(nothing), "--out", str(tmp_path / "pre")])
    id_only = ", ".join(sorted(name for name, cls in REGISTRY.items() if not reads_content(cls)))
    assert result.exit_code != 0 and "dataset 'scientific-ids' has none (it has neither item text nor images)" in str(
        result.exception) and f"can train on it: {id_only}" in str(result.exception)


def test_finetune_from_a_checkpoint_stays_on_its_dataset(scientific_mm_with, tmp_path):
    """`finetune --from` without --dataset fine-tunes on the pre-training's dataset, not the default one."""
    text = scientific_mm_with("scientific-text", (".feat1CLS",))
    tiny = ["params.hidden=16", "params.ffn=32", "params.layers=1", "train.epochs=1", "train.progress=false"]
    sets = [a for kv in tiny for a in ("--set", kv)]
    result = runner.invoke(app, ["pretrain", "--dataset", str(text), "--out", str(tmp_path / "pre")] + sets)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["finetune", "--from", str(tmp_path / "pre"), "--out", str(tmp_path / "fine")] + sets)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "fine" / "config.yaml").read_text())["dataset"] == str(text)
    result = runner.invoke(app, ["finetune", "--from", str(tmp_path / "pre"), "--out", str(tmp_path / "other"),
                                 "--set", "dataset=amazon-scientific-mm"] + sets)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "other" / "config.yaml").read_text())["dataset"] == "amazon-scientific-mm"


def test_features_reads_a_table_with_its_column_names(tmp_path):
    import pandas as pd

    folder = tmp_path / "mine"
    folder.mkdir()
    pd.DataFrame({"uid": ["u"] * 5, "iid": list("abcde")}).to_csv(folder / "interactions.csv", index=False)
    base = ["features", "--dataset", str(folder), "--no-text", "--no-image"]
    result = runner.invoke(app, base)
    assert result.exit_code != 0 and "data.columns.user" in str(result.exception)
    result = runner.invoke(app, [*base, "--set", "data.columns.user=uid", "--set", "data.columns.item=iid"])
    assert result.exit_code == 0, result.output
    assert "text: no store (skipped)" in result.output
    result = runner.invoke(app, [*base, "--set", "features.text=null"])
    assert result.exit_code != 0 and "data.* settings" in str(result.exception)


def test_features_options_fall_back_to_the_settings_defaults(monkeypatch):
    """`mp4sr features` builds one FeatureSettings from the options given and passes it on as it is;
    an option not given takes the setting's default, which its help shows."""
    import mp4sr.features
    from mp4sr.config import FeatureSettings

    seen = []
    monkeypatch.setattr(mp4sr.features, "run_features", lambda dataset, settings, **how: seen.append(settings))
    result = runner.invoke(app, ["features", "--no-image"])
    assert result.exit_code == 0, result.output
    assert seen.pop() == FeatureSettings(image=None)
    result = runner.invoke(app, ["features", "--keywords", "7", "--image-mode", "keywords", "--vocabulary", "words.txt"])
    assert result.exit_code == 0, result.output
    assert seen.pop() == FeatureSettings(n_keywords=7, image_mode="keywords", vocabulary="words.txt")
    result = runner.invoke(app, ["features", "--image-mode", "words"])
    assert result.exit_code != 0 and "image_mode" in str(result.exception) and not seen

    page = " ".join(runner.invoke(app, ["features", "--help"], env={"COLUMNS": "300"}).output.split())
    defaults = FeatureSettings()
    for flag, value in (("--keywords", defaults.n_keywords), ("--max-vectors", defaults.max_vectors),
                        ("--image-mode", defaults.image_mode), ("--dtype", defaults.dtype),
                        ("--text-encoder", defaults.text), ("--image-from", defaults.image_from)):
        assert re.search(rf"{flag} [^│]*\(default: {value}\)", page), flag


def test_a_typo_in_params_fails_before_anything_runs(tmp_path):
    result = runner.invoke(app, ["train", "--model", "sasrec", "--set", "params.hiden=3", "--out", str(tmp_path / "t")])
    assert result.exit_code != 0 and not (tmp_path / "t").exists()
    assert "params.hiden: sasrec has no such setting (did you mean params.hidden?)" in str(result.exception)


def test_compare_ranks_a_trained_run_again_under_the_other_protocol(tmp_path):
    out = tmp_path / "pop"
    result = runner.invoke(app, ["train", "--model", "pop", "--dataset", "amazon-scientific-mm", "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["compare", str(out), str(out), "--protocol", "history_excluded", "--k", "10"])
    assert result.exit_code == 0, result.output
    assert "paired over 2,928 test users" in result.output and "recall@10" in result.output and "+0.0%" in result.output
    import numpy as np

    kept, excluded = np.load(out / "test_ranks.npy"), np.load(out / "test_ranks_history_excluded.npy")
    assert (excluded < kept).mean() > 0.5  # the items of the history ranked above the target are gone
    result = runner.invoke(app, ["compare", str(out), str(out), "--by", "item_count", "--k", "10"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert all(re.search(rf"│ {label} +│ +[\d,]+ │ recall@10", result.output) for label in ("all", "0", "1-5", "6-20", ">20"))
    result = runner.invoke(app, ["compare", str(out), str(tmp_path / "none")])
    assert result.exit_code != 0 and "no such run folder" in str(result.exception)


def test_ctrl_c_outside_training_says_interrupted_and_exits_130(tmp_path, monkeypatch, capsys):
    """Typer turns a KeyboardInterrupt into a silent exit 130; the command line says what happened."""
    import mp4sr.cli
    import mp4sr.experiment.tune

    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mp4sr.experiment.tune, "tune", pressed)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"trials": 1, "space": {"train.lr": {"log_uniform": [1e-4, 1e-2]}}}))
    monkeypatch.setattr("sys.argv", ["mp4sr", "tune", "--model", "pop", "--dataset", "amazon-scientific-mm",
                                     "--space", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "tune")])
    with pytest.raises(SystemExit) as stopped:
        mp4sr.cli.main()
    assert stopped.value.code == 130 and "interrupted" in capsys.readouterr().err
