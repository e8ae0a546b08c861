"""The HTTP service: POST /recommend, POST /items, GET /health, OpenAPI docs at /docs, and a page to
try the model in a browser at / (with the catalogue endpoints it reads: see ``page``).

Concurrent /recommend requests are scored together by a ``MicroBatcher`` (one forward pass for all
that wait); the Recommender's lock keeps scoring and adding items apart. Inputs are bounded by
``ServeLimits``: a too long history, too large k -> 422; too many histories in one request, or too
large a body -> 413. POST /recommend, the hot path, is answered by a plain ASGI handler in front of
FastAPI's layers (see ``_Service``), with the same request model and the same answers.
"""

# No `from __future__ import annotations`: FastAPI must see the request models defined in _models().
import asyncio
import gc
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from inspect import signature
from typing import Annotated, Any, Awaitable, Callable, Mapping, Sequence

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

import mp4sr
from mp4sr.errors import DataError, MP4SRError
from mp4sr.serve.batcher import MicroBatcher
from mp4sr.serve.errors import DuplicateItemsError, UnknownItemsError, UnsupportedError
from mp4sr.serve.limits import ServeLimits
from mp4sr.serve.page import install_page
from mp4sr.serve.recommender import POPULARITY, Recommender


@dataclass
class Job:
    """One request's share of a batched forward pass (item indexes already resolved)."""

    histories: list[list[int]]
    k: int
    exclude_seen: bool
    candidates: list[int] | None


def score_jobs(rec: Recommender, jobs: Sequence[Job]) -> list[Any]:
    """One forward pass over every job's histories, then one top-k pass over the rows of the jobs
    without candidates (each row with its job's k) and one per job with candidates."""
    scores = rec.score_indexes([h for job in jobs for h in job.histories])
    bounds = np.cumsum([0] + [len(job.histories) for job in jobs])
    out: list[Any] = [None] * len(jobs)
    shared = [n for n, job in enumerate(jobs) if job.candidates is None]
    if shared:
        sizes = [len(jobs[n].histories) for n in shared]
        rows = torch.from_numpy(np.concatenate([np.arange(bounds[n], bounds[n + 1]) for n in shared]))
        try:
            tops = rec.select_top(scores[rows], [h for n in shared for h in jobs[n].histories],
                                  np.repeat([jobs[n].k for n in shared], sizes),
                                  np.repeat([jobs[n].exclude_seen for n in shared], sizes))
        except Exception:  # noqa: BLE001 - done again below job by job, so that only the failing job fails
            tops = None
        if tops is not None:
            ends = np.cumsum(sizes)
            for n, end, size in zip(shared, ends, sizes):
                out[n] = tops[end - size : end]
    for n, job in enumerate(jobs):
        if out[n] is None:
            try:
                out[n] = rec.select_top(scores[bounds[n] : bounds[n + 1]], job.histories, job.k, job.exclude_seen,
                                        job.candidates)
            except Exception as e:  # noqa: BLE001 - this job's failure, not the others'
                out[n] = e
    return out


def _models(limits: ServeLimits):
    """Request and response models; their bounds come from ``limits`` (and show in the OpenAPI docs)."""
    ItemId = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_id_length)]
    History = Annotated[list[ItemId], Field(max_length=limits.max_history)]

    class RecommendRequest(BaseModel):
        """One history (``history``) or a batch (``histories``); item ids oldest first."""

        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
            {"history": ["B00004Z6I8", "B0006OB3KS"], "k": 10}, {"histories": [["B00004Z6I8"], []], "k": 5}]})
        history: History | None = Field(None, description=f"item ids, oldest first (at most {limits.max_history})")
        histories: list[History] | None = Field(None, description=f"a batch of histories (at most {limits.max_batch})")
        k: int = Field(10, ge=1, le=limits.max_k)
        exclude_seen: bool = Field(True, description="leave the history's items out of the recommendations")
        skip_unknown: bool = Field(False, description="ignore unknown ids instead of answering 422")
        candidates: list[ItemId] | None = Field(None, max_length=limits.max_candidates,
                                                description="recommend only among these items")

        @model_validator(mode="after")
        def _exactly_one(self):
            if (self.history is None) == (self.histories is None):
                raise ValueError("give exactly one of 'history' (a list of item ids) or 'histories' (a list of lists)")
            return self

    class ScoredItem(BaseModel):
        item_id: str
        score: float

    class Recommendations(BaseModel):
        items: list[ScoredItem]
        fallback: str | None = Field(None, description="'popularity' when the history had no known item")
        skipped: list[str] = Field(default_factory=list, description="unknown ids ignored (skip_unknown)")

    class BatchRecommendations(BaseModel):
        results: list[Recommendations]

    class NewItemIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: ItemId
        text: str | None = Field(None, max_length=100_000)
        image_base64: str | None = Field(None, description="the bytes of an image file (JPEG, PNG...), base64")
        text_vector: list[float] | None = Field(None, description="a precomputed vector in the text store's space")
        image_vector: list[float] | None = Field(None, description="a precomputed vector in the image store's space")

    class AddItemsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: list[NewItemIn] = Field(min_length=1, max_length=limits.max_new_items)

    class AddItemsResponse(BaseModel):
        added: list[str]
        n_items: int

    return RecommendRequest, Recommendations, BatchRecommendations, AddItemsRequest, AddItemsResponse


# Exceptions -> (status, whether the body names the ids); the most specific kinds first.
ERRORS: list[tuple[type[Exception], int, bool]] = [
    (UnknownItemsError, 422, True), (DuplicateItemsError, 409, True), (UnsupportedError, 400, False),
    (DataError, 422, False), (MP4SRError, 500, False)]


def _error_content(exc: Exception) -> tuple[int, dict[str, Any]]:
    for kind, status, with_ids in ERRORS:
        if isinstance(exc, kind):
            return status, {"detail": str(exc), **({"ids": exc.ids} if with_ids else {})}
    raise exc


def _invalid_content(errors: Sequence[Any]) -> dict[str, Any]:
    lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors]
    return {"detail": "; ".join(lines), "errors": jsonable_encoder(errors)}


def _with_item_fields(content: dict[str, Any], fields: dict[str, list[str]]) -> dict[str, Any]:
    """A 422 of POST /items, with the fields the model reads for each modality (``accepts``)."""
    said = "; ".join(f"{m}: {' or '.join(names)}" for m, names in fields.items())
    return {**content, "detail": f"{content['detail']} (this model takes 'id' and, per modality, {said})",
            "accepts": fields}


def _install_error_handlers(app: FastAPI, rec: Recommender) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        content = _invalid_content(exc.errors())
        if request.method == "POST" and not _is_json(request.scope):
            content["detail"] += " (the body must be JSON, sent with the header Content-Type: application/json)"
        elif request.url.path.endswith("/items") and rec.supports_new_items:
            content = _with_item_fields(content, rec.new_item_fields())
        return JSONResponse(status_code=422, content=content)

    async def handler(_: Request, exc: Exception) -> JSONResponse:
        status, content = _error_content(exc)
        return JSONResponse(status_code=status, content=content)

    for kind, *_ in ERRORS:
        app.add_exception_handler(kind, handler)


class _Service(FastAPI):
    """FastAPI, with a few hot routes answered by plain ASGI handlers in front of its middleware and
    router (``fast_routes``: (method, path) -> handler). The FastAPI routes of the same paths stay: they
    document the API and serve it under a root path; both call the same code and answer alike.
    Middleware added to the app does not see the fast routes: clear ``fast_routes`` when adding some."""

    fast_routes: Mapping[tuple[str, str], Callable[..., Awaitable[None]]] = {}
    body_limit: int | None = None  # a request whose Content-Length is over it gets a JSON 413 here

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            if self.body_limit is not None and _content_length(scope) > self.body_limit:
                return await _send_json(send, 413, {"detail": f"request body over {self.body_limit:,} bytes"})
            handler = self.fast_routes.get((scope["method"], scope["path"]))
            if handler is not None and _is_json(scope):
                return await handler(scope, receive, send)
        await super().__call__(scope, receive, send)


def _content_length(scope) -> int:
    """The request's Content-Length (0 when absent or unreadable: a streamed body is limited as it is read)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


def _is_json(scope) -> bool:
    """Whether the request says its body is JSON (other bodies are FastAPI's to refuse)."""
    return any(name == b"content-type" and value.split(b";")[0].strip().lower() == b"application/json"
               for name, value in scope["headers"])


def _parse(model: type[BaseModel], body: bytes) -> BaseModel:
    """``body`` validated as FastAPI does it (``json.loads``, then the model), or its RequestValidationError."""
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return model.model_validate(json.loads(body), from_attributes=True)
    except json.JSONDecodeError as e:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": e.msg}}]) from None
    except ValidationError as e:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                      for error in e.errors(include_url=False)]) from None


async def _read_body(receive, limit: int) -> bytes | None:
    """The request body; None when it is over ``limit`` bytes or the client left."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_json(send, status: int, content: Any) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(rec: Recommender, limits: ServeLimits = ServeLimits()) -> FastAPI:
    """The FastAPI app serving ``rec``."""
    RecommendRequest, Recommendations, BatchRecommendations, AddItemsRequest, AddItemsResponse = _models(limits)
    batcher = MicroBatcher(lambda jobs: score_jobs(rec, jobs), max_size=rec.batch_size, size=lambda job: len(job.histories))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await batcher.start()
        # Everything loaded so far (model, catalogue, app) lives as long as the service: keep it out
        # of the garbage collector's full passes, whose pauses over it were the latency tail.
        gc.collect()
        gc.freeze()
        yield
        await batcher.stop()

    streamed_limit = {"max_body_size": limits.max_body_bytes} if "max_body_size" in signature(FastAPI).parameters else {}
    app = _Service(title=mp4sr.__name__, version=mp4sr.__version__, lifespan=lifespan, **streamed_limit,
                  description=f"Next-item recommendations from a {rec.model_name} model; item ids are the catalogue's ids.")
    app.body_limit = limits.max_body_bytes
    _install_error_handlers(app, rec)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **rec.describe()}

    async def answer(req: RecommendRequest) -> dict[str, Any]:
        histories = [req.history] if req.history is not None else req.histories
        if len(histories) > limits.max_batch:
            raise HTTPException(413, f"{len(histories)} histories in one request; at most {limits.max_batch}: split the batch")
        known, skipped = rec.resolve(histories, req.skip_unknown)
        allowed = None if req.candidates is None else rec.resolve([req.candidates], req.skip_unknown, "candidates")[0][0]
        step = rec.batch_size
        parts = await asyncio.gather(*(batcher.submit(Job(known[i : i + step], req.k, req.exclude_seen, allowed))
                                       for i in range(0, len(known), step)))
        tops = [top for part in parts for top in part]
        results = [{"items": [{"item_id": i, "score": s} for i, s in top], "fallback": None if h else POPULARITY,
                    "skipped": sk} for top, h, sk in zip(tops, known, skipped)]
        return results[0] if req.history is not None else {"results": results}

    # The response is serialised with json.dumps instead of being validated again against its model on
    # the event loop, the busiest part of the service under load; the model stays in the docs.
    @app.post("/recommend", response_class=JSONResponse,
              responses={200: {"model": Recommendations | BatchRecommendations},
                         413: {"description": "too many histories in one request, or a body over "
                                              f"{limits.max_body_bytes:,} bytes"},
                         422: {"description": "invalid request or unknown item ids (named in 'ids')"}})
    async def recommend(req: RecommendRequest) -> Response:
        """Top-k items after each history; an empty history gets the most popular items."""
        return Response(json.dumps(await answer(req)), media_type="application/json")

    async def recommend_asgi(scope, receive, send) -> None:
        """POST /recommend without FastAPI's middleware, dependency and routing layers, which cost more
        CPU per request than scoring does; same validation (the request model), same answers and errors."""
        body = await _read_body(receive, limits.max_body_bytes)
        if body is None:
            return await _send_json(send, 413, {"detail": f"request body over {limits.max_body_bytes:,} bytes"})
        try:
            status, content = 200, await answer(_parse(RecommendRequest, body))
        except RequestValidationError as e:
            status, content = 422, _invalid_content(e.errors())
        except HTTPException as e:
            status, content = e.status_code, {"detail": e.detail}
        except MP4SRError as e:
            status, content = _error_content(e)
        await _send_json(send, status, content)

    app.fast_routes = {("POST", "/recommend"): recommend_asgi}

    @app.post("/items", response_model=AddItemsResponse, status_code=201,
              responses={400: {"description": "this model cannot add items (ID-only)"},
                         409: {"description": "an id is already in the catalogue"},
                         422: {"description": "invalid items, or content this model cannot encode; 'accepts' "
                                              "lists the fields it reads per modality"}})
    def add_items(req: AddItemsRequest):  # sync: encoding runs in FastAPI's threadpool
        """Add items without retraining (content models): text, an image (base64) or precomputed vectors,
        as `GET /health`'s `new_item_fields` says for this model."""
        try:
            added = rec.add_items([item.model_dump(exclude_none=True) for item in req.items])
        except DuplicateItemsError:
            raise
        except DataError as e:
            return JSONResponse(status_code=422, content=_with_item_fields({"detail": str(e)}, rec.new_item_fields()))
        return {"added": added, "n_items": rec.n_items}

    install_page(app, rec, limits)
    return app
