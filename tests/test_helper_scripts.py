"""The helper scripts under scripts/ that are not documentation commands."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_feature_space_finds_one_space_within_a_dataset_and_none_across_modalities(shared_data):
    lines = _script("feature_space").compare("amazon-scientific-mm", "amazon-scientific-mm")
    text = next(line for line in lines if "mean text vectors" in line)
    image = next(line for line in lines if "mean image vectors" in line)
    within = next(line for line in lines if "text and image vectors within" in line)
    assert text.endswith("1.00") and image.endswith("1.00")
    assert float(within.rsplit(" ", 1)[1]) < 0.6  # CLIP's text and image vectors sit apart
