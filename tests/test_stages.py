"""`mp4sr run` sends each setting to the stage that reads it and refuses the ones that would do nothing."""

import pytest
from typer.testing import CliRunner

from mp4sr.cli import app
from mp4sr.errors import ConfigError
from mp4sr.stages import check_overrides, route_run_overrides, schedule_keys


def test_set_reaches_both_stages_but_the_schedule_and_fine_tuning_only_settings():
    shared = ["data.max_len=20", "params.modalities=[text]", "train.device=cpu", "eval.ks=[10]"]
    pre, fine = route_run_overrides("mp4sr", shared + ["train.lr=1e-4", "params.id_embedding=false"],
                                    ["train.epochs=3", "params.mixup=false"], transfer=False)
    assert pre == shared + ["train.epochs=3", "params.mixup=false"]
    assert fine == shared + ["train.lr=1e-4", "params.id_embedding=false"]
    assert {"train.lr", "train.epochs", "train.batch_size"} <= set(schedule_keys("mp4sr"))


def test_pretrain_set_wins_over_set_in_pre_training():
    pre, _ = route_run_overrides("mp4sr", ["params.dropout=0.1"], ["params.dropout=0.3"], transfer=False)
    assert pre == ["params.dropout=0.1", "params.dropout=0.3"]  # later wins


@pytest.mark.parametrize("set_, pretrain_set, named", [
    (["params.mixup=false"], [], "--pretrain-set params.mixup=false"),
    (["params={cmcl: false}"], [], "--pretrain-set"),
    ([], ["params.freeze_encoder=true"], "--set params.freeze_encoder=true"),
    ([], ["params.loss=sampled"], "--set params.loss=sampled"),
    (["params.stage=pretrain"], [], "chosen by the command"),
    (["data.exclude_users_of=[B]"], [], "--pretrain-dataset"),
    (["data.join_datasets=[C]"], [], "--pretrain-set data.join_datasets=[C]"),
])
def test_settings_the_stage_would_ignore_are_refused_naming_the_option(set_, pretrain_set, named):
    with pytest.raises(ConfigError) as e:
        route_run_overrides("mp4sr", set_, pretrain_set, transfer=False)
    assert named in str(e.value)


def test_source_settings_go_to_pre_training_only_in_a_transfer_run():
    pre, fine = route_run_overrides("mp4sr", ["data.exclude_users_of=[B]", "data.join_datasets=[C]"], [], transfer=True)
    assert pre == ["data.exclude_users_of=[B]", "data.join_datasets=[C]"] and fine == []


def test_the_stage_commands_refuse_the_other_stages_settings():
    with pytest.raises(ConfigError, match="`mp4sr pretrain`"):
        check_overrides("mp4sr", "finetune", ["params.nip=false"], "`mp4sr finetune`")
    with pytest.raises(ConfigError, match="unisrec"):
        check_overrides("unisrec", "pretrain", ["params.fix_encoder=false"], "`mp4sr pretrain`")
    check_overrides("mp4sr", "pretrain", ["params.nip=false", "params.hidden=32"], "`mp4sr pretrain`")


def test_run_refuses_before_anything_trains(tmp_path):
    result = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "r"), "--set", "params.mixup=false"])
    assert result.exit_code != 0 and "--pretrain-set params.mixup=false" in str(result.exception)
    assert not (tmp_path / "r").exists()


def test_train_refuses_a_setting_of_the_stage_it_does_not_run(tmp_path):
    result = CliRunner().invoke(app, ["train", "--model", "mp4sr", "--out", str(tmp_path / "t"), "--set", "params.mixup=false"])
    assert result.exit_code != 0 and "pre-training setting" in str(result.exception)


def test_a_stage_starts_from_the_stage_defaults_of_its_own_model(tmp_path):
    """`mp4sr pretrain` / `finetune` / `run` apply the stage defaults of the model in use (the default
    pre-trainable model's unless a file or --set names another), under the user's settings."""
    from mp4sr.models import DEFAULT_PRETRAINABLE, model_class
    from mp4sr.stages import stage_config

    default = stage_config("pretrain", None, ["train.lr=5e-4"])
    expected = model_class(DEFAULT_PRETRAINABLE).stage_defaults["pretrain"]["train"]
    assert default.model == DEFAULT_PRETRAINABLE and default.params["stage"] == "pretrain"
    assert default.train.epochs == expected["epochs"] and default.train.lr == 5e-4
    file = tmp_path / "unisrec.yaml"
    file.write_text("model: unisrec\n")
    fine = stage_config("finetune", file, None)
    assert fine.model == "unisrec" and fine.train.batch_size == model_class("unisrec").stage_defaults["finetune"]["train"]["batch_size"]
    assert stage_config("finetune", None, ["model=unisrec"]).train == fine.train


def test_mp4sr_fine_tunes_on_prefixes_and_pre_trains_on_whole_sequences():
    """MP4SR's fine-tuning batches one prefix per row by default; its pre-training, `mp4sr train` (from
    scratch) and the other models keep whole sequences. Under `mp4sr run` the training form is part of
    the fine-tuning schedule, so `--set` changes it for fine-tuning only."""
    from mp4sr.config import RunConfig, build_config
    from mp4sr.stages import stage_config

    fine, pre = stage_config("finetune", None, None), stage_config("pretrain", None, None)
    assert (fine.data.training_mode, fine.train.batch_size) == ("prefix", 2048)
    assert pre.data.training_mode == "sequence"
    assert build_config(RunConfig, None, None, model="mp4sr").data.training_mode == "sequence"
    assert stage_config("finetune", None, ["model=unisrec"]).data.training_mode == "sequence"
    pre_set, fine_set = route_run_overrides("mp4sr", ["data.training_mode=sequence", "data.max_len=20"], [], transfer=False)
    assert pre_set == ["data.max_len=20"] and fine_set == ["data.training_mode=sequence", "data.max_len=20"]


def test_the_stage_commands_refuse_a_model_without_stages(tmp_path):
    result = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path / "p"), "--set", "model=sasrec"])
    assert result.exit_code != 0 and "no pre-training stage" in str(result.exception)
    assert not (tmp_path / "p").exists()
