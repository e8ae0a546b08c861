"""Titles, search and photo files of the items, as the page shows them."""

from __future__ import annotations

import numpy as np
import pytest

from mp4sr.data.dataset import ItemCatalogue
from mp4sr.serve.display import ItemDisplay, text_title, title_field


@pytest.mark.parametrize("fields, expected", [
    (["categories", "title", "name"], "title"),
    (["description", "item_title"], "item_title"),
    (["article_id_text", "prod_name", "product_type_name"], "prod_name"),
    (["description", "brand"], "description"),
    ([], None),
])
def test_title_field(fields, expected):
    assert title_field(fields) == expected


@pytest.mark.parametrize("text, expected", [
    ("Digital caliper. Measuring tools. Brand X.", "Digital caliper"),
    ("Title: LEGO City Fire Truck ; Description: A red truck ; ", "LEGO City Fire Truck"),
    ("3.5 mm jack cable", "3.5 mm jack cable"),
    ("", ""),
    ("x" * 500, "x" * 119 + "…"),
])
def test_text_title(text, expected):
    assert text_title(text) == expected


def catalogue_display(tmp_path) -> ItemDisplay:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "notes.txt").write_text("not an image")
    catalogue = ItemCatalogue(
        np.array(["A1", "B2", "C3", "D4"], dtype=object),
        text=["Red dress. Dress.", "Blue dress. Dress.", "", "Dress shoes. Shoes."],
        fields={"name": ["Red dress", "Blue dress", "", "Dress shoes"]},
        image_paths=[str(tmp_path / "a.jpg"), str(tmp_path / "missing.jpg"), str(tmp_path / "notes.txt"), None])
    return ItemDisplay.of(["A1", "B2", "C3", "D4", "NEW"], catalogue, [*catalogue.text, "Green scarf. Wool."])


def test_titles_come_from_the_catalogue_then_the_text_then_the_id(tmp_path):
    display = catalogue_display(tmp_path)
    assert display.titles == ["Red dress", "Blue dress", "C3", "Dress shoes", "Green scarf"]


def test_search_matches_every_word_exact_ids_and_prefixes_first(tmp_path):
    display = catalogue_display(tmp_path)
    popularity = np.array([1.0, 5.0, 0.0, 9.0, 0.0])
    assert display.search("dress", 10, popularity) == ([3, 1, 0], 3)  # "Dress shoes" starts with it
    assert display.search("DRESS red", 10, popularity) == ([0], 1)
    assert display.search("c3", 10, popularity) == ([2], 1)  # by id
    assert display.search("", 2, popularity) == ([3, 1], 5)  # the most popular
    assert display.search("scarf", 10, popularity) == ([4], 1)  # an added item, by its text's title
    assert display.search("nothing like it", 10, popularity) == ([], 0)


def test_only_existing_image_files_are_photos(tmp_path):
    display = catalogue_display(tmp_path)
    assert display.image_file(0) == tmp_path / "a.jpg"
    assert [display.image_file(i) for i in range(1, 5)] == [None] * 4  # missing, not an image, none, added
