"""Checkpoints trained on real data (amazon-scientific-mm) once for the serve tests, their
recommenders, and HTTP clients of their apps; a small shop with photos (H&M articles) and a content
model trained on it, for the page; a real uvicorn server in a thread."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
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


# ---------------------------------------------------------------------------- a shop with photos


def write_shop(folder: Path, hm_sample: Path, n_items: int = 200, n_users: int = 400) -> pd.DataFrame:
    """A table-layout dataset (``interactions.csv``, ``items.csv`` with an ``image`` column of relative
    paths, ``images/``) of real H&M articles: the 100 with a photo and more of the same product types.
    The users are made up, deterministically: each likes two product types and takes 5-10 of their
    articles, those with a photo thrice as often (so photos show among the recommendations)."""
    articles = pd.read_parquet(hm_sample / "articles_sample.parquet")
    photos = {int(p.stem): p for p in (hm_sample / "images").glob("*.jpg")}
    with_photo = articles["article_id"].isin(photos)
    same_types = articles["product_type_name"].isin(set(articles.loc[with_photo, "product_type_name"]))
    items = pd.concat([articles[with_photo], articles[~with_photo & same_types].head(n_items - with_photo.sum())])
    items = items.sort_values("article_id").reset_index(drop=True)
    (folder / "images").mkdir(parents=True)
    items["image"] = ""
    for row, article in enumerate(items["article_id"]):
        if article in photos:
            shutil.copy(photos[article], folder / "images" / photos[article].name)
            items.loc[row, "image"] = f"images/{photos[article].name}"
    columns = ["article_id", "prod_name", "product_type_name", "colour_group_name", "detail_desc", "image"]
    items[columns].rename(columns={"article_id": "item_id"}).to_csv(folder / "items.csv", index=False)
    rng = np.random.default_rng(0)
    types = list(items.groupby("product_type_name").indices.values())
    weight = np.where(items["image"] != "", 3.0, 1.0)
    rows = []
    for user in range(n_users):
        pool = np.concatenate([types[t] for t in rng.choice(len(types), size=2, replace=False)])
        size = min(len(pool), int(rng.integers(5, 11)))
        for t, row in enumerate(rng.choice(pool, size=size, replace=False, p=weight[pool] / weight[pool].sum())):
            rows.append((f"user-{user:04d}", items["article_id"][row], t))
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(folder / "interactions.csv", index=False)
    return items


@pytest.fixture(scope="session")
def shop(shared_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "hm-shop"
    write_shop(folder, shared_data / "hm-sample")
    return folder


@pytest.fixture(scope="session")
def shop_recommender(shop, serve_cache, tmp_path_factory):
    """MP4SR on the shop's item text (the bundled sentence encoder), inductive, so that an item added
    with a text is scored like any other; 2 epochs."""
    from mp4sr.config import RunConfig, build_config
    from mp4sr.serve import Recommender
    from mp4sr.train import train_run

    threads = torch.get_num_threads()
    folder = tmp_path_factory.mktemp("run-shop")
    overrides = ["params.stage=finetune", "params.id_embedding=false", "params.modalities=[text]",
                 "features.image=null", "train.epochs=2", *SHORT]
    train_run(build_config(RunConfig, None, overrides, model="mp4sr", dataset=str(shop)), folder)
    torch.set_num_threads(threads)
    return Recommender.load(folder)


@contextlib.contextmanager
def _running_server(app):
    """Real uvicorn serving ``app`` on 127.0.0.1 and a free port, in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def running_server():
    """``with running_server(app) as url``: a real server for the test modules."""
    return _running_server


@pytest.fixture(scope="session")
def shop_server(shop_recommender):
    """The shop's model behind a real server; its base URL."""
    from mp4sr.serve.app import create_app

    with _running_server(create_app(shop_recommender)) as url:
        yield url
