"""The helper scripts under scripts/ that are not documentation commands."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(folder: Path, ranks, protocol="history_excluded") -> Path:
    folder.mkdir(parents=True)
    np.save(folder / f"test_ranks_{protocol}.npy", np.asarray(ranks, dtype=np.int32))
    return folder


def test_paired_runs_averages_seeds_per_user_and_tests_the_difference(tmp_path):
    paired = _script("paired_runs")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 40, size=400)
    better = np.maximum(base - 8, 0)  # every user's item ranked higher
    a = [_run(tmp_path / "a1", better), _run(tmp_path / "a2", better)]
    b = [_run(tmp_path / "b1", base)]
    lines = paired.compare(a, b, "history_excluded", [10])
    recall = next(line for line in lines if "recall@10" in line)
    expected_a, expected_b = (better < 10).mean(), (base < 10).mean()
    assert f"A {expected_a:.4f}" in recall and f"B {expected_b:.4f}" in recall
    assert float(recall.split("t-test p = ")[1].split()[0]) < 1e-6
    with pytest.raises(SystemExit, match="different numbers of test users"):
        paired.compare([_run(tmp_path / "short", base[:10])], b, "history_excluded", [10])
    with pytest.raises(SystemExit, match="no such file"):
        paired.compare(a, b, "history_kept", [10])


def test_feature_space_finds_one_space_within_a_dataset_and_none_across_modalities(shared_data):
    lines = _script("feature_space").compare("amazon-scientific-mm", "amazon-scientific-mm")
    text = next(line for line in lines if "mean text vectors" in line)
    image = next(line for line in lines if "mean image vectors" in line)
    within = next(line for line in lines if "text and image vectors within" in line)
    assert text.endswith("1.00") and image.endswith("1.00")
    assert float(within.rsplit(" ", 1)[1]) < 0.6  # CLIP's text and image vectors sit apart
