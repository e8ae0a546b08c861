"""Fixtures of the training tests: the split of amazon-scientific-mm, a Trainer factory, and one
uninterrupted run that the interrupted-and-resumed runs are compared with."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mp4sr.data import leave_one_out
from mp4sr.train.trainer import Trainer, TrainResult
from resume_support import build_trainer


@pytest.fixture(scope="session")
def split(scientific_mm):
    return leave_one_out(scientific_mm)


@pytest.fixture
def make_trainer(split):
    def make(out, resume=False, config=None, **kwargs) -> Trainer:
        return build_trainer(split, out, resume, config, **kwargs)

    return make


@pytest.fixture(scope="session")
def uninterrupted(split, tmp_path_factory) -> tuple[TrainResult, Path]:
    out = tmp_path_factory.mktemp("uninterrupted")
    return build_trainer(split, out).fit(), out


@pytest.fixture
def finished_copy(uninterrupted, tmp_path) -> Path:
    """A copy of the uninterrupted run's folder, for tests that resume or damage it."""
    return Path(shutil.copytree(uninterrupted[1], tmp_path / "copy"))
