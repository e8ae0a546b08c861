"""Checkpoints trained on real data (amazon-scientific-mm) once for the serve tests, their
recommenders, and HTTP clients of their apps."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mp4sr.paths import CACHE_ENV  # noqa: E402

DATASET = "amazon-scientific-mm"
# Small and short: the tests check serving mechanics, not accuracy (one thread: the machine is shared).
SHORT = ["train.batch_size=512", "train.progress=false", "train.threads=1",
         "params.layers=1", "params.hidden=32", "params.ffn=64"]
RUNS = {
    # name: (model, overrides)
    "sasrec": ("sasrec", ["train.epochs=1", *SHORT]),
    # inductive (content only): an added item with the same content as an existing one scores the same
    "mp4sr": ("mp4sr", ["params.stage=finetune", "params.id_embedding=false", "train.epochs=1", *SHORT]),
    # transductive (item-ID embeddings), untrained weights: enough for the add / save / reload mechanics
    "mp4sr_id": ("mp4sr", ["params.stage=finetune", "train.epochs=0", *SHORT]),
}


@pytest.fixture(scope="session")
def serve_cache(tmp_path_factory):
    """Feature stores of the session in a tmp folder (never ~/.cache)."""
    folder = tmp_path_factory.mktemp("serve-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="session")
def checkpoints(serve_cache, shared_data, scientific_mm, tmp_path_factory) -> dict:
    """{name: run folder holding best.pt}, trained in this process."""
    from mp4sr.config import RunConfig, build_config
    from mp4sr.train import train_run

    threads = torch.get_num_threads()
    out = {}
    for name, (model, overrides) in RUNS.items():
        folder = tmp_path_factory.mktemp(f"run-{name}")
        config = build_config(RunConfig, None, overrides, model=model, dataset=str(shared_data / DATASET))
        train_run(config, folder, dataset=scientific_mm)
        out[name] = folder
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def recommenders(checkpoints, scientific_mm) -> dict:
    from mp4sr.serve import Recommender

    return {name: Recommender.load(folder, dataset=scientific_mm) for name, folder in checkpoints.items()}


@pytest.fixture(scope="session")
def split(scientific_mm):
    from mp4sr.data import leave_one_out

    return leave_one_out(scientific_mm)


@pytest.fixture(scope="session")
def clients(recommenders):
    """{name: TestClient} of each checkpoint's app (its lifespan runs for the session)."""
    from fastapi.testclient import TestClient

    from mp4sr.serve.app import create_app

    opened = {name: TestClient(create_app(rec)) for name, rec in recommenders.items()}
    for client in opened.values():
        client.__enter__()
    yield opened
    for client in opened.values():
        client.__exit__(None, None, None)
