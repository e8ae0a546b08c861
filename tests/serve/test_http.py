"""The HTTP service against checkpoints trained on real data: its rankings are the offline
evaluation's, and its bounds, errors and fallbacks are what the docs say."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch

from mp4sr.data.batching import eval_batches


def ids_of(dataset, indexes) -> list[str]:
    return [str(dataset.items.ids[i]) for i in indexes]


def history_of(dataset, evalset, user: int) -> list[str]:
    return ids_of(dataset, dataset.sequences.items[evalset.hist_start[user] : evalset.hist_end[user]])


def assert_same_ranking(got: dict, expected: dict) -> None:
    """Same items and scores, up to float noise (batches of other shapes round differently): two items
    may only swap places where their scores tie."""
    assert len(got["items"]) == len(expected["items"])
    for a, b in zip(got["items"], expected["items"]):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert a["item_id"] == b["item_id"] or abs(a["score"] - b["score"]) < 1e-5
    assert {k: v for k, v in got.items() if k != "items"} == {k: v for k, v in expected.items() if k != "items"}


def post(client, **body):
    response = client.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("name", ["sasrec", "mp4sr"])
def test_topk_equals_offline_evaluation(name, clients, recommenders, scientific_mm, split):
    """The top-k of a test user's history over HTTP is the ranking of full_sort_predict on the
    evaluation batch that the offline evaluation builds for that user."""
    model = recommenders[name].model
    values = torch.from_numpy(scientific_mm.sequences.items)
    batch = next(eval_batches(values, split.test, model.max_len, 48))
    with torch.no_grad():
        top = torch.topk(model.full_sort_predict(batch), 10)
    histories = [history_of(scientific_mm, split.test, u) for u in batch.rows.tolist()]
    results = post(clients[name], histories=histories, k=10, exclude_seen=False)["results"]
    for result, scores, indexes in zip(results, top.values.tolist(), top.indices.tolist()):
        assert [r["item_id"] for r in result["items"]] == ids_of(scientific_mm, indexes)
        assert [r["score"] for r in result["items"]] == pytest.approx(scores, abs=1e-5)
        assert result["fallback"] is None


def test_exclude_seen_matches_offline_exclude_history(clients, recommenders, scientific_mm, split):
    rec, user = recommenders["sasrec"], 7
    history = history_of(scientific_mm, split.test, user)
    with torch.no_grad():
        scores = rec.score_indexes([[rec.index[i] for i in history]])[0]
    scores[[rec.index[i] for i in history]] = -torch.inf
    expected = ids_of(scientific_mm, torch.topk(scores, 10).indices.tolist())
    got = post(clients["sasrec"], history=history, k=10)  # exclude_seen is on by default
    assert [r["item_id"] for r in got["items"]] == expected
    assert not set(expected) & set(history)


def test_single_and_batch_agree(clients, scientific_mm, split):
    histories = [history_of(scientific_mm, split.valid, u) for u in (0, 1, 2)] + [[]]
    batch = post(clients["mp4sr"], histories=histories, k=5)["results"]
    assert len(batch) == len(histories)
    for got, history in zip(batch, histories):
        assert_same_ranking(got, post(clients["mp4sr"], history=history, k=5))


def test_unknown_ids_are_422_naming_them(clients, scientific_mm, split):
    history = history_of(scientific_mm, split.test, 3)
    response = clients["sasrec"].post("/recommend", json={"history": [*history, "NOT-AN-ASIN", "ALSO-NOT"]})
    assert response.status_code == 422
    body = response.json()
    assert body["ids"] == ["NOT-AN-ASIN", "ALSO-NOT"]
    assert "NOT-AN-ASIN" in body["detail"] and "skip_unknown" in body["detail"]


def test_skip_unknown_drops_them(clients, scientific_mm, split):
    history = history_of(scientific_mm, split.test, 3)
    mixed = ["NOT-AN-ASIN", *history[:2], "ALSO-NOT", *history[2:]]
    got = post(clients["sasrec"], history=mixed, skip_unknown=True)
    assert got["skipped"] == ["NOT-AN-ASIN", "ALSO-NOT"]
    assert got["items"] == post(clients["sasrec"], history=history)["items"]


def test_empty_history_falls_back_to_popularity(clients, split):
    got = post(clients["sasrec"], history=[], k=5)
    assert got["fallback"] == "popularity"
    counts = split.train_counts()
    assert [r["score"] for r in got["items"]] == sorted(counts, reverse=True)[:5]
    only_unknown = post(clients["sasrec"], history=["NOT-AN-ASIN"], k=5, skip_unknown=True)
    assert only_unknown["fallback"] == "popularity" and only_unknown["items"] == got["items"]


def test_long_history_is_truncated_to_the_most_recent(clients, recommenders, scientific_mm):
    max_len = recommenders["mp4sr"].max_len
    long = [str(i) for i in scientific_mm.items.ids[: max_len + 30]]
    full = post(clients["mp4sr"], history=long, k=10, exclude_seen=False)
    recent = post(clients["mp4sr"], history=long[-max_len:], k=10, exclude_seen=False)
    assert full["items"] == recent["items"]
    shorter = post(clients["mp4sr"], history=long[-max_len + 1 :], k=10, exclude_seen=False)
    assert shorter["items"] != full["items"]  # the oldest item kept does count


def test_candidates_restrict_the_ranking(clients, scientific_mm, split):
    history = history_of(scientific_mm, split.test, 5)
    candidates = [str(i) for i in scientific_mm.items.ids[100:110]]
    got = post(clients["sasrec"], history=history, k=20, candidates=candidates, exclude_seen=False)
    assert sorted(r["item_id"] for r in got["items"]) == sorted(candidates)
    assert [r["score"] for r in got["items"]] == sorted((r["score"] for r in got["items"]), reverse=True)


@pytest.mark.parametrize("body, status, words", [
    ({"history": ["x"], "k": 0}, 422, "body.k"),
    ({"history": ["x"], "k": 5000}, 422, "less than or equal to 1000"),
    ({"history": ["B00004Z6I8"] * 2001}, 422, "at most 2000"),
    ({"histories": [["B00004Z6I8"]] * 1025}, 413, "at most 1024"),
    ({"history": ["x"], "histories": [["x"]]}, 422, "exactly one of"),
    ({}, 422, "exactly one of"),
    ({"history": ["x"], "kk": 3}, 422, "body.kk"),
    ({"history": [""]}, 422, "at least 1 character"),
])
def test_request_bounds(clients, body, status, words):
    response = clients["sasrec"].post("/recommend", json=body)
    assert response.status_code == status
    assert words in response.json()["detail"]


@pytest.fixture(scope="module")
def route_only_client(recommenders):
    """The SASRec app with its plain ASGI /recommend handler switched off: FastAPI's route answers."""
    from fastapi.testclient import TestClient

    from mp4sr.serve.app import create_app

    app = create_app(recommenders["sasrec"])
    app.fast_routes = {}
    with TestClient(app) as client:
        yield client


def test_fast_handler_answers_like_the_fastapi_route(clients, route_only_client, scientific_mm, split):
    history = history_of(scientific_mm, split.test, 3)
    bodies = [{"history": history, "k": 7}, {"histories": [history, [], history[:1]], "k": 3, "exclude_seen": False},
              {"history": history + ["nope"]}, {"history": history + ["nope"], "skip_unknown": True},
              {"history": history, "candidates": ["nope"]}, {"history": ["x"], "k": 0}, {}, {"history": "x"},
              {"history": ["x"], "kk": 3}, {"histories": [["x"]] * 1025}, {"history": [], "k": 2}]
    for body in bodies:
        fast, route = clients["sasrec"].post("/recommend", json=body), route_only_client.post("/recommend", json=body)
        assert fast.status_code == route.status_code, body
        if fast.status_code == 200:
            assert fast.json() == route.json()
        else:
            assert fast.json()["detail"] == route.json()["detail"], body
            assert fast.json().get("ids") == route.json().get("ids")
    for raw, kind in [(b"{", "application/json"), (b"", "application/json"), (b"[1, 2]", "application/json"),
                      (b'{"history": []}', "text/plain"), (b'{"history": []}', "application/json; charset=utf-8")]:
        fast = clients["sasrec"].post("/recommend", content=raw, headers={"content-type": kind})
        route = route_only_client.post("/recommend", content=raw, headers={"content-type": kind})
        assert fast.status_code == route.status_code and fast.json() == route.json(), raw
    form = clients["sasrec"].post("/recommend", content=b'{"history": []}',  # curl -d's default content type
                                  headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 422 and "Content-Type: application/json" in form.json()["detail"]


def test_body_over_the_limit_is_413(recommenders, scientific_mm):
    from fastapi.testclient import TestClient

    from mp4sr.serve.app import ServeLimits, create_app

    item = str(scientific_mm.items.ids[0])
    with TestClient(create_app(recommenders["sasrec"], ServeLimits(max_body_bytes=1000))) as client:
        assert client.post("/recommend", json={"history": [item] * 10}).status_code == 200
        response = client.post("/recommend", json={"history": [item] * 200})
        assert response.status_code == 413 and "1,000 bytes" in response.json()["detail"]
        for path in ("/items", "/rank"):  # every route answers a too large body in JSON
            response = client.post(path, json={"items": [{"id": item, "text": "x" * 2000}]})
            assert response.status_code == 413 and "1,000 bytes" in response.json()["detail"], path


def test_jobs_scored_together_answer_as_alone(recommenders, scientific_mm, split):
    """One forward and top-k pass over jobs of different k, exclusion and candidates gives each job
    what it gets alone."""
    from mp4sr.serve.app import Job, score_jobs

    rec = recommenders["sasrec"]
    histories = [list(scientific_mm.sequences[u][:-1]) for u in range(12)]
    jobs = [Job(histories[:3], 5, True, None), Job(histories[3:4], 12, False, None),
            Job(histories[4:8], 1, True, list(range(40))), Job(histories[8:], 20, True, None)]
    together = score_jobs(rec, jobs)
    for job, got in zip(jobs, together, strict=True):
        alone = rec.select_top(rec.score_indexes(job.histories), job.histories, job.k, job.exclude_seen, job.candidates)
        assert [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in alone]
        assert [len(row) for row in got] == [job.k] * len(job.histories)
        if job.exclude_seen:
            assert all(not set(rec.index[i] for i, _ in row) & set(h) for row, h in zip(got, job.histories))


def test_health_and_docs(clients):
    health = clients["mp4sr"].get("/health").json()
    assert health["status"] == "ok" and health["model"] == "mp4sr" and health["n_items"] >= 1585
    assert clients["sasrec"].get("/docs").status_code == 200
    schema = clients["sasrec"].get("/openapi.json").json()
    assert {"/recommend", "/items", "/health"} <= set(schema["paths"])


# ---------------------------------------------------------------------------- new items


def test_added_item_ranks_next_to_its_twin(checkpoints, scientific_mm, split):
    """An item added with the content vectors of an existing item scores like it (inductive model)."""
    from fastapi.testclient import TestClient

    from mp4sr.serve import Recommender
    from mp4sr.serve.app import create_app

    rec = Recommender.load(checkpoints["mp4sr"], dataset=scientific_mm)
    with TestClient(create_app(rec)) as client:
        history = history_of(scientific_mm, split.test, 11)
        twin = post(client, history=history, k=1)["items"][0]["item_id"]
        row = rec.index[twin]
        item = {"id": "NEW-TWIN", **{f"{m}_vector": rec.model.tables[m].vectors[row, 0].tolist() for m in ("text", "image")}}
        response = client.post("/items", json={"items": [item]})
        assert response.status_code == 201, response.text
        assert response.json() == {"added": ["NEW-TWIN"], "n_items": 1586}
        top = post(client, history=history, k=5)["items"]
        assert {r["item_id"] for r in top[:2]} == {twin, "NEW-TWIN"}
        assert top[0]["score"] == pytest.approx(top[1]["score"], abs=1e-5)
        assert client.post("/items", json={"items": [item]}).status_code == 409


def test_add_items_needs_vectors_for_imported_features(clients):
    response = clients["mp4sr"].post("/items", json={"items": [{"id": "NEW-TEXT", "text": "A digital caliper."}]})
    assert response.status_code == 422
    assert "text_vector" in response.json()["detail"] and "imported" in response.json()["detail"]
    wrong = clients["mp4sr"].post("/items", json={"items": [{"id": "NEW-V", "text_vector": [0.1, 0.2]}]})
    assert wrong.status_code == 422 and "512" in wrong.json()["detail"]


def test_a_422_of_items_says_which_fields_the_model_takes(clients):
    """amazon-scientific-mm's vectors are imported: only precomputed vectors can be added, and every 422 says so."""
    accepts = {"text": ["text_vector (512 numbers)"], "image": ["image_vector (512 numbers)"]}
    assert clients["mp4sr"].get("/health").json()["new_item_fields"] == accepts
    for item in ({"id": "NEW-T", "text": "A digital caliper."}, {"id": "NEW-P", "image_path": "caliper.jpg"}):
        response = clients["mp4sr"].post("/items", json={"items": [item]})
        assert response.status_code == 422 and response.json()["accepts"] == accepts
        assert "text: text_vector (512 numbers)" in response.json()["detail"]
    assert clients["sasrec"].get("/health").json()["new_item_fields"] == {}


def test_serving_docs_list_exactly_the_models_that_add_items():
    import re
    from pathlib import Path

    from mp4sr.models import REGISTRY
    from mp4sr.models.base import can_add_items

    page = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    listed = {kind: set(re.findall(r"`(\w+)`", re.search(rf"Models that {kind} add items: ([^.]*)\.", page).group(1)))
              for kind in ("can", "cannot")}
    assert listed == {"can": {n for n, c in REGISTRY.items() if can_add_items(c)},
                      "cannot": {n for n, c in REGISTRY.items() if not can_add_items(c)}}


def test_add_items_refused_for_sasrec(clients):
    response = clients["sasrec"].post("/items", json={"items": [{"id": "NEW", "text_vector": [0.0] * 512}]})
    assert response.status_code == 400
    assert "sasrec" in response.json()["detail"] and "content model" in response.json()["detail"]


# ---------------------------------------------------------------------------- a real server


@pytest.fixture
def live_server(recommenders, running_server):
    """Real uvicorn on 127.0.0.1 and a free port, serving the SASRec checkpoint."""
    from mp4sr.serve.app import create_app

    with running_server(create_app(recommenders["sasrec"])) as url:
        yield url


def test_real_server_answers_concurrent_requests_like_the_test_client(live_server, clients, scientific_mm, split):
    requests = [{"history": history_of(scientific_mm, split.test, u), "k": 3 + u % 5, "exclude_seen": u % 2 == 0}
                for u in range(40)] + [{"history": [], "k": 4}]
    expected = [post(clients["sasrec"], **body) for body in requests]

    async def send_all():
        async with httpx.AsyncClient(base_url=live_server, timeout=30) as client:
            responses = await asyncio.gather(*(client.post("/recommend", json=body) for body in requests))
        return [r.json() for r in responses]

    for got, want in zip(asyncio.run(send_all()), expected, strict=True):
        assert_same_ranking(got, want)
    assert httpx.get(f"{live_server}/health").json()["model"] == "sasrec"
