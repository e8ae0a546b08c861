"""The developer guide's model, written as the guide says, registers and trains like any other."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from mp4sr.cli import app
from mp4sr.models import REGISTRY

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "developer.md"


def _model_block() -> str:
    section = GUIDE.read_text().split("## Adding a model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _train(model: str, out: Path, shared_data: Path) -> dict:
    args = ["train", "--model", model, "--dataset", str(shared_data / "amazon-scientific-mm"), "--out", str(out),
            "--set", "train.epochs=8", "--set", "train.batch_size=256", "--set", "train.progress=false",
            "--set", "train.tensorboard=false", "--set", "train.threads=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def test_the_guides_model_registers_and_beats_popularity(shared_data, tmp_path):
    namespace: dict = {"__name__": "guide_model"}
    exec(compile(_model_block(), str(GUIDE), "exec"), namespace)
    try:
        assert REGISTRY["average"] is namespace["Average"]
        average = _train("average", tmp_path / "average", shared_data)
        pop = _train("pop", tmp_path / "pop", shared_data)
        assert average["test"]["ndcg@10"] > pop["test"]["ndcg@10"], (average["test"], pop["test"])
    finally:
        REGISTRY.pop("average", None)
