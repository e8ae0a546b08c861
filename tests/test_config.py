import pytest

from mp4sr.config import RunConfig, build_config, parse_overrides
from mp4sr.errors import ConfigError


def test_layers_later_wins(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: pop\ntrain:\n  lr: 0.01\n  epochs: 3\nparams:\n  hidden: 32\n")
    cfg = build_config(RunConfig, f, ["train.lr=1e-4", "params.layers=3"], dataset="x")
    assert (cfg.model, cfg.dataset, cfg.train.lr, cfg.train.epochs) == ("pop", "x", 1e-4, 3)
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
