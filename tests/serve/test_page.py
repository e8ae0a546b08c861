"""The page's endpoints on a model trained on a shop of real H&M articles with photos: search by
title, item details, photos served by item id only, and the rank of a just-added item."""

from __future__ import annotations

import http.client
import re
from urllib.parse import urlsplit

import pandas as pd
import pytest

from mp4sr.serve.page import STATIC


@pytest.fixture(scope="module")
def client(shop_recommender):
    from fastapi.testclient import TestClient

    from mp4sr.serve.app import create_app

    with TestClient(create_app(shop_recommender)) as opened:
        yield opened


@pytest.fixture(scope="module")
def items(shop) -> pd.DataFrame:
    table = pd.read_csv(shop / "items.csv", keep_default_na=False)
    return table.assign(item_id=table["item_id"].astype(str))


def get(client, path, **params):
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_page_and_its_files_are_served_with_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="static/page.js"' in page.text and 'href="static/page.css"' in page.text
    for name, kind in (("page.js", "javascript"), ("page.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    for file in STATIC.iterdir():  # no CDN, no font or script from another site
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", file.read_text()), file.name


def test_search_by_title_finds_the_item_and_says_whether_it_has_a_photo(client, items):
    for _, item in items.iloc[[0, 1, 50, 150]].iterrows():
        found = get(client, "/catalogue/search", q=item["prod_name"].upper(), limit=100)
        hit = next(r for r in found["items"] if r["id"] == item["item_id"])
        assert hit["title"] == item["prod_name"].strip() and hit["has_image"] == bool(item["image"])
        assert hit["text"].startswith(item["prod_name"].strip())
        assert all(item["prod_name"].lower() in r["title"].lower() for r in found["items"])
        assert found["total"] >= len(found["items"]) >= 1


def test_empty_search_lists_the_most_popular_items(client, shop_recommender):
    found = get(client, "/catalogue/search", limit=5)
    assert found["total"] == shop_recommender.n_items
    counts = [float(shop_recommender.popularity[shop_recommender.index[r["id"]]]) for r in found["items"]]
    assert counts == [score for _, score in shop_recommender.recommend([], k=5)]  # ties in any order


def test_lookup_gives_the_titles_of_ids_and_names_unknown_ones(client, items):
    ids = items["item_id"].iloc[[3, 7]].tolist()
    assert [r["title"] for r in get(client, "/catalogue/items", id=ids)["items"]] == items["prod_name"].iloc[[3, 7]].str.strip().tolist()
    response = client.get("/catalogue/items", params={"id": [ids[0], "NO-SUCH-ITEM"]})
    assert response.status_code == 422 and response.json()["ids"] == ["NO-SUCH-ITEM"]
    assert "skip_unknown" not in response.json()["detail"]  # the lookup has no such option to suggest


def test_image_is_the_catalogue_photo_of_the_item(client, items, shop):
    with_photo = items[items["image"] != ""].iloc[0]
    response = client.get(f"/items/{with_photo['item_id']}/image")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == (shop / with_photo["image"]).read_bytes()
    without = items[items["image"] == ""].iloc[0]
    assert client.get(f"/items/{without['item_id']}/image").status_code == 404
    assert client.get("/items/NO-SUCH-ITEM/image").status_code == 404


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client normalises its dots)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_no_path_from_the_client_reaches_a_file(shop_server, items, shop):
    photo = items.loc[items["image"] != "", "image"].iloc[0]
    for path in ["/items/../../../../etc/passwd/image", "/items/..%2F..%2F..%2F..%2Fetc%2Fpasswd/image",
                 "/items//etc/passwd/image", "/items/%2Fetc%2Fpasswd/image", f"/items/{photo}/image",
                 f"/items/{shop / photo}/image", "/static/../display.py", "/static/..%2Fdisplay.py",
                 "/static/%2e%2e/display.py", "/static//etc/passwd"]:
        status, body = raw_get(shop_server, path)
        assert status == 404, (path, status)
        assert b"root:" not in body and b"ItemDisplay" not in body and not body.startswith(b"\xff\xd8")
    assert raw_get(shop_server, f"/items/{items.loc[items['image'] != '', 'item_id'].iloc[0]}/image")[0] == 200


def test_rank_agrees_with_recommend(client, shop_recommender, items):
    history = items["item_id"].iloc[[10, 20, 30]].tolist()
    top = client.post("/recommend", json={"history": history, "k": 20}).json()["items"]
    answer = client.post("/rank", json={"history": history, "items": [r["item_id"] for r in top] + history[:1]})
    assert answer.status_code == 200, answer.text
    ranks = answer.json()["ranks"]
    assert [r["rank"] for r in ranks[:20]] == list(range(1, 21))
    assert [r["score"] for r in ranks[:20]] == pytest.approx([r["score"] for r in top], abs=1e-5)
    assert ranks[20] == {"item_id": history[0], "rank": None, "score": None}  # seen, left out
    assert answer.json()["of"] == shop_recommender.n_items - 3
    kept = client.post("/rank", json={"history": history, "items": history[:1], "exclude_seen": False}).json()
    assert kept["ranks"][0]["rank"] >= 1 and kept["of"] == shop_recommender.n_items
    unknown = client.post("/rank", json={"history": history, "items": ["NO-SUCH-ITEM"]})
    assert unknown.status_code == 422 and "skip_unknown" not in unknown.json()["detail"]


def test_an_item_added_with_a_text_ranks_where_recommend_puts_it(client, shop_recommender, items):
    """The inductive text model scores an added item from its text alone; /rank says the place
    /recommend gives it, and search finds it by the title of its text."""
    history = items["item_id"].iloc[[5, 6]].tolist()
    source = items.iloc[40]
    text = ". ".join(source[["prod_name", "product_type_name", "colour_group_name", "detail_desc"]].str.strip())
    added = client.post("/items", json={"items": [{"id": "NEW-TEXT", "text": text}]})
    assert added.status_code == 201, added.text
    answer = client.post("/rank", json={"history": history, "items": ["NEW-TEXT"]}).json()
    everything = client.post("/recommend", json={"history": history, "k": shop_recommender.n_items}).json()["items"]
    place = [r["item_id"] for r in everything].index("NEW-TEXT") + 1
    assert answer["ranks"][0]["rank"] == place and answer["of"] == len(everything)
    found = get(client, "/catalogue/search", q="NEW-TEXT")["items"]
    assert [(r["id"], r["title"], r["has_image"]) for r in found] == [("NEW-TEXT", source["prod_name"].strip(), False)]
