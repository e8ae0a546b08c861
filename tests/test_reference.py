"""The settings reference is made from the code, and docs/settings.md is that reference."""

from pathlib import Path

from typer.testing import CliRunner

from mp4sr import reference
from mp4sr.cli import app
from mp4sr.config import RunConfig, build_config
from mp4sr.models import REGISTRY
from mp4sr.models.base import parse_model_config

ROOT = Path(__file__).resolve().parents[1]


def test_settings_page_is_the_generated_reference():
    page = (ROOT / "docs" / "settings.md").read_text()
    assert page == reference.markdown(), f"docs/settings.md is stale: regenerate it with `{reference.REGENERATE}`"


def test_every_setting_has_a_type_default_and_description():
    rows = reference.settings_of(RunConfig) + [r for name in REGISTRY for r in reference.model_settings(name)]
    undescribed = [r.key for r in rows if not r.description]
    assert not undescribed, f"add Field(description=...) to {undescribed}"
    keys = {r.key for r in rows}
    assert {"data.user_core", "data.columns.user", "features.text", "train.lr", "params.cmcl_weight"} <= keys
    assert "data.cores" not in keys


def test_config_show_prints_a_models_settings_with_their_stage():
    result = CliRunner().invoke(app, ["config", "--show", "--model", "mp4sr"])
    assert result.exit_code == 0, result.output
    assert "params.mixup" in result.output and "[pre-training only]" in result.output
    assert "params.id_embedding" in result.output and "data.columns.time" in result.output
    assert "params.mask_ratio" not in result.output  # bert4rec's
    wrong = CliRunner().invoke(app, ["config", "--show", "--model", "nope"])
    assert wrong.exit_code != 0 and "unknown model" in str(wrong.exception)


def test_example_run_config_is_accepted():
    config = build_config(RunConfig, ROOT / "configs" / "run" / "mp4sr-example.yaml")
    assert config.model == "mp4sr" and config.data.columns.user == "user_id"
    parse_model_config(config.model, config.params)


def test_an_experiment_file_given_to_config_names_the_right_command(tmp_path):
    result = CliRunner().invoke(app, ["train", "--config", str(ROOT / "configs/experiments/paper-reduced.yaml"),
                                      "--out", str(tmp_path)])
    assert result.exit_code != 0 and "mp4sr experiment" in str(result.exception)
