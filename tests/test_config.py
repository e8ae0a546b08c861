import pytest

from mp4sr.config import RunConfig, build_config, parse_overrides
from mp4sr.errors import ConfigError


def test_layers_later_wins(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: sasrec\ntrain:\n  lr: 0.01\n  epochs: 3\nparams:\n  hidden: 32\n")
    cfg = build_config(RunConfig, f, ["train.lr=1e-4", "params.layers=3"], dataset="x")
    assert (cfg.model, cfg.dataset, cfg.train.lr, cfg.train.epochs) == ("sasrec", "x", 1e-4, 3)
    assert cfg.params == {"hidden": 32, "layers": 3}


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ConfigError, match="lrr"):
        build_config(RunConfig, None, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["train.lr"])
    with pytest.raises(ConfigError, match="valid_metric"):
        build_config(RunConfig, None, ["train.valid_metric=auc"])
    with pytest.raises(ConfigError, match="not found"):
        build_config(RunConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"lr_patience \(3\) must be below patience \(3\)"):
        build_config(RunConfig, None, ["train.lr_decay=0.3", "train.patience=3"])
    assert build_config(RunConfig, None, ["train.lr_patience=30", "train.patience=3"]).train.lr_decay is None
    with pytest.raises(ConfigError, match="lr_min only applies with lr_decay"):
        build_config(RunConfig, None, ["train.lr_min=1e-5"])
    assert build_config(RunConfig, None, ["train.lr_decay=0.3", "train.lr_min=1e-5"]).train.lr_min == 1e-5


def test_params_are_checked_against_the_model_when_the_config_is_built():
    cfg = build_config(RunConfig, None, ["params.hidden=32"], model="sasrec")
    assert cfg.parsed_params.hidden == 32 and cfg.parsed_params.layers == type(cfg.parsed_params)().layers
    assert cfg.model_dump(mode="json")["params"] == {"hidden": 32}  # stored configs and run keys: the dict given
    with pytest.raises(ConfigError, match=r"params\.hiden: sasrec has no such setting \(did you mean params\.hidden\?\)"):
        build_config(RunConfig, None, ["params.hiden=3"], model="sasrec")
    with pytest.raises(ConfigError, match=r"model 'sasrec':\n  params\.hidden='abc': Input should be a valid integer"):
        build_config(RunConfig, None, ["params.hidden=abc"])
    with pytest.raises(ConfigError, match="params.hidden: pop has no such setting"):  # another model's setting
        build_config(RunConfig, None, ["params.hidden=32"], model="pop")
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        RunConfig(model="nope")


def test_config_imports_no_model_code():
    """Building the command line reads config.py: the models (and torch) load only when a config is built."""
    import subprocess
    import sys

    code = "import sys, mp4sr.config, mp4sr.cli; assert 'torch' not in sys.modules and 'mp4sr.models' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
