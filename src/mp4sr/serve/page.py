"""The service's page (GET /, files under /static) and the catalogue endpoints it reads.

GET /catalogue/search finds items by title or id, GET /catalogue/items gives the titles of given ids,
GET /items/{id}/image serves an item's photo from the catalogue (looked up by id, never by a path
from the client), and POST /rank says where given items rank after a history (e.g. one just added
with POST /items). The page itself is plain HTML, CSS and a script shipped in the package: nothing
is built, nothing is fetched from elsewhere.
"""

# No `from __future__ import annotations`: FastAPI must see the request models defined in install_page().
from pathlib import Path
from typing import Annotated, Any, Sequence

import torch
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from mp4sr.serve.display import IMAGE_TYPES, ItemDisplay, shorten
from mp4sr.serve.limits import ServeLimits
from mp4sr.serve.recommender import Recommender

STATIC = Path(__file__).with_name("static")
MAX_LOOKUP = 100  # ids per GET /catalogue/items (they travel in the URL)
TEXT_SHOWN = 300  # characters of an item's text in the catalogue answers


def item_ranks(rec: Recommender, history: Sequence[str], items: Sequence[str],
               exclude_seen: bool = True) -> tuple[list[dict[str, Any]], int]:
    """The rank (1 = first) and score of each of ``items`` among every item after ``history``, as
    /recommend ranks them (None for an item of the history when ``exclude_seen``); and how many items
    were ranked."""
    (known,), _ = rec.resolve([history], skippable=False)
    (wanted,), _ = rec.resolve([items], what="items", skippable=False)
    scores = rec.score_indexes([known])[0]
    if exclude_seen and known:
        scores[torch.as_tensor(known)] = -torch.inf
    out = []
    for item, index in zip(items, wanted):
        score = float(scores[index])
        seen = score == float("-inf")
        out.append({"item_id": item, "rank": None if seen else int((scores > score).sum()) + 1,
                    "score": None if seen else score})
    return out, int(torch.isfinite(scores).sum())


def install_page(app: FastAPI, rec: Recommender, limits: ServeLimits) -> None:
    """Add the page and its endpoints to ``app``."""
    ItemId = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_id_length)]

    class RankRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
            {"history": ["B00004Z6I8"], "items": ["NEW-1"]}]})
        history: list[ItemId] = Field(max_length=limits.max_history, description="item ids, oldest first")
        items: list[ItemId] = Field(min_length=1, max_length=limits.max_k, description="the items to rank")
        exclude_seen: bool = Field(True, description="leave the history's items out of the ranking")

    shown: list[ItemDisplay] = []  # the display of the catalogue as it was last read (items may be added)

    def display() -> ItemDisplay:
        if not shown or len(shown[0]) != rec.n_items:
            shown[:] = [rec.item_display()]
        return shown[0]

    def info(view: ItemDisplay, index: int) -> dict[str, Any]:
        return {"id": str(view.ids[index]), "title": view.titles[index], "text": shorten(view.texts[index], TEXT_SHOWN),
                "has_image": view.image_file(index) is not None}

    page = (STATIC / "index.html").read_text(encoding="utf-8")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def root() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/catalogue/search")
    def search(q: str = Query("", max_length=200, description="words of the title or the id; empty: the most popular"),
               limit: int = Query(12, ge=1, le=100)) -> dict[str, Any]:
        """Items whose title or id holds every word of ``q``, best matches first, then the most popular."""
        view = display()
        found, total = view.search(q, limit, rec.popularity.numpy())
        return {"items": [info(view, i) for i in found], "total": total}

    @app.get("/catalogue/items", responses={422: {"description": "unknown item ids (named in 'ids')"}})
    def lookup(ids: Annotated[list[str], Query(alias="id", description="item ids (repeat the parameter)")]) -> dict[str, Any]:
        """Title, text and whether a photo exists, of each given item."""
        if len(ids) > MAX_LOOKUP:
            raise HTTPException(422, f"{len(ids)} ids in one lookup; at most {MAX_LOOKUP}")
        (indexes,), _ = rec.resolve([ids], what="lookup", skippable=False)
        view = display()
        return {"items": [info(view, i) for i in indexes]}

    @app.get("/items/{item_id:path}/image", response_class=FileResponse,
             responses={404: {"description": "no such item, or it has no photo"}})
    def image(item_id: str) -> FileResponse:
        """The item's photo, from the catalogue the model was trained on."""
        index = rec.index.get(item_id)
        file = None if index is None else display().image_file(index)
        if file is None:
            raise HTTPException(404, f"item {item_id!r:.300} is not in the catalogue" if index is None
                                else f"item {item_id!r} has no photo in the catalogue")
        return FileResponse(file, media_type=IMAGE_TYPES[file.suffix.lower()],
                            headers={"cache-control": "max-age=3600"})

    @app.post("/rank", responses={422: {"description": "invalid request or unknown item ids (named in 'ids')"}})
    def rank(req: RankRequest) -> dict[str, Any]:  # sync: scoring runs in FastAPI's threadpool
        """Where each of ``items`` ranks among every item after ``history`` (1 = first)."""
        ranks, of = item_ranks(rec, req.history, req.items, req.exclude_seen)
        return {"ranks": ranks, "of": of}
