"""The HTTP service: POST /recommend, POST /items, GET /health, OpenAPI docs at /docs.

Concurrent /recommend requests are scored together by a ``MicroBatcher`` (one forward pass for all
that wait); the Recommender's lock keeps scoring and adding items apart. Inputs are bounded by
``ServeLimits``: a too long history, too large k -> 422; too many histories in one request -> 413.
"""

# No `from __future__ import annotations`: FastAPI must see the request models defined in _models().
import asyncio
import gc
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from inspect import signature
from typing import Annotated, Any, Sequence

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from mp4sr.errors import DataError, MP4SRError
from mp4sr.serve.batcher import MicroBatcher
from mp4sr.serve.errors import DuplicateItemsError, UnknownItemsError, UnsupportedError
from mp4sr.serve.recommender import POPULARITY, Recommender


@dataclass(frozen=True)
class ServeLimits:
    max_k: int = 1000
    max_history: int = 2000  # ids accepted per history (the model reads the last max_len of them)
    max_batch: int = 1024  # histories per request
    max_candidates: int = 100_000
    max_new_items: int = 1000  # items per POST /items
    max_id_length: int = 256
    max_body_bytes: int = 32 * 2**20  # larger requests -> 413 (where FastAPI supports max_body_size)


@dataclass
class Job:
    """One request's share of a batched forward pass (item indexes already resolved)."""

    histories: list[list[int]]
    k: int
    exclude_seen: bool
    candidates: list[int] | None


def score_jobs(rec: Recommender, jobs: Sequence[Job]) -> list[Any]:
    """One forward pass over every job's histories, then each job's own top-k."""
    scores = rec.score_indexes([h for job in jobs for h in job.histories])
    out, start = [], 0
    for job in jobs:
        rows = scores[start : start + len(job.histories)]
        start += len(job.histories)
        try:
            out.append(rec.select_top(rows, job.histories, job.k, job.exclude_seen, job.candidates))
        except Exception as e:  # noqa: BLE001 - this job's failure, not the others'
            out.append(e)
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


def _error(status: int, exc: Exception, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": str(exc), **extra})


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": "; ".join(lines), "errors": jsonable_encoder(exc.errors())})

    handlers = [(UnknownItemsError, 422, True), (DuplicateItemsError, 409, True), (UnsupportedError, 400, False),
                (DataError, 422, False), (MP4SRError, 500, False)]
    for kind, status, with_ids in handlers:
        async def handler(_: Request, exc: Exception, status=status, with_ids=with_ids) -> JSONResponse:
            return _error(status, exc, **({"ids": exc.ids} if with_ids else {}))
        app.add_exception_handler(kind, handler)


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

    body_limit = {"max_body_size": limits.max_body_bytes} if "max_body_size" in signature(FastAPI).parameters else {}
    app = FastAPI(title="mp4sr", version="0.1.0", lifespan=lifespan, **body_limit,
                  description=f"Next-item recommendations from a {rec.model_name} model; item ids are the catalogue's ids.")
    _install_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/docs")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **rec.describe()}

    # The response is serialised here (json.dumps) instead of being validated again against its model on
    # the event loop, which is the busiest part of the service under load; the model stays in the docs.
    @app.post("/recommend", response_class=JSONResponse,
              responses={200: {"model": Recommendations | BatchRecommendations},
                         413: {"description": "too many histories in one request"},
                         422: {"description": "invalid request or unknown item ids (named in 'ids')"}})
    async def recommend(req: RecommendRequest) -> Response:
        """Top-k items after each history; an empty history gets the most popular items."""
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
        content = results[0] if req.history is not None else {"results": results}
        return Response(json.dumps(content), media_type="application/json")

    @app.post("/items", response_model=AddItemsResponse, status_code=201,
              responses={400: {"description": "this model cannot add items (ID-only)"},
                         409: {"description": "an id is already in the catalogue"}})
    def add_items(req: AddItemsRequest):  # sync: encoding runs in FastAPI's threadpool
        """Add items without retraining (content models): text, an image (base64) or precomputed vectors."""
        added = rec.add_items([item.model_dump(exclude_none=True) for item in req.items])
        return {"added": added, "n_items": rec.n_items}

    return app
