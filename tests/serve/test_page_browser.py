"""The page in a real headless Chromium (Debian's chromium and chromedriver, driven by Selenium),
against a real server: search, pick items, read the recommendations, toggle exclude-seen, add an item.

Skipped when Chromium, its driver or Selenium is missing, except in CI (CI=true), where that fails.
``MP4SR_PAGE_SCREENSHOT=path`` also writes the test's screenshot there (docs/img/serving-page.png).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from mp4sr.serve.page import item_ranks

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None)
WINDOW = (1280, 900)
WAIT_S = 30


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'mp4sr[browser]')"
    if not CHROMIUM or not CHROMEDRIVER:
        return "chromium or chromedriver is not installed (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="session")  # session: set up before the (session) model, so a skip costs no training
def browser():
    missing = _browser_missing()
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"the browser test must run in CI: {missing}")
    if missing:
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    # the viewport itself at WINDOW (the window's size includes what a headless window lacks)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(lambda d: condition(d), message=what)


def texts(driver, selector: str) -> list[str]:
    """The rendered text of each element matching ``selector``, read at one instant (the page redraws)."""
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)", selector)


def ids_in(driver, selector: str) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.dataset.id)", selector)


def card_ids(driver) -> list[str]:
    return ids_in(driver, "#recs li")


def pick(driver, query: str, item_id: str, with_enter: bool = False) -> None:
    """Type ``query`` in the search box and click the result ``item_id`` (once it is listed: the list is
    drawn again as the words arrive), or press Enter, which takes the first result."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    box = driver.find_element("id", "search")
    box.clear()
    box.send_keys(query + ("\n" if with_enter else ""))
    if with_enter:
        return

    def click(d) -> bool:
        try:
            d.find_element("css selector", f'#results li[data-id="{item_id}"]').click()
            return True
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    wait_for(driver, click, f"{item_id} among the results for {query!r}")


def photos_rendered(driver) -> list[int]:
    """naturalWidth of every photo on the page, once all have loaded (0 = broken)."""
    script = "return [...document.images].map(i => i.complete ? i.naturalWidth : -1)"
    wait_for(driver, lambda d: -1 not in d.execute_script(script), "the photos to load")
    return driver.execute_script(script)


def test_page_searches_picks_and_recommends_in_a_browser(browser, shop_server, shop_recommender, tmp_path):
    rec, k = shop_recommender, 10
    display = rec.item_display()
    shown = [i for i in range(rec.n_items) if display.image_file(i) is not None]
    same_type = [i for i in shown if display.texts[i].split(". ")[1] == display.texts[shown[0]].split(". ")[1]]
    picks = [str(display.ids[i]) for i in (same_type + shown)[:3]]
    queries = [display.titles[rec.index[i]] for i in picks]
    (first,), _ = display.search(queries[-1], 1, rec.popularity.numpy())
    picks[-1] = str(display.ids[first])  # the last is picked with Enter: the first result

    browser.get(shop_server + "/")
    wait_for(browser, lambda d: len(card_ids(d)) == k, f"{k} recommendations (popularity) on load")
    assert "model mp4sr, trained on hm-shop" in browser.find_element("id", "model").text
    assert card_ids(browser) == [i for i, _ in rec.recommend([], k=k)]
    assert texts(browser, "#results li .title")  # popular items to pick from

    for n, (query, item) in enumerate(zip(queries, picks), start=1):
        pick(browser, query, item, with_enter=n == len(picks))
        wait_for(browser, lambda d: len(ids_in(d, "#history li")) == n, "the history to grow")
        wait_for(browser, lambda d: f"after {n} item" in d.find_element("id", "recs-note").text, "new recommendations")
    assert ids_in(browser, "#history li") == picks
    assert texts(browser, "#history li .title") == [display.titles[rec.index[i]] for i in picks]

    expected = rec.recommend(picks, k=k)
    wait_for(browser, lambda d: card_ids(d) == [i for i, _ in expected], "the model's top-k after the history")
    assert texts(browser, "#recs li .title") == [display.titles[rec.index[i]] for i, _ in expected]
    assert texts(browser, "#recs li .score") == [f"{s:.3f}" for _, s in expected]
    assert not set(card_ids(browser)) & set(picks)

    browser.find_element("id", "exclude-seen").click()
    with_seen = rec.recommend(picks, k=k, exclude_seen=False)
    wait_for(browser, lambda d: card_ids(d) == [i for i, _ in with_seen], "the top-k with the history's items")
    assert "included" in browser.find_element("id", "recs-note").text

    widths = photos_rendered(browser)
    listed = ids_in(browser, "li[data-id]")
    n_photos = sum(display.image_file(rec.index[i]) is not None for i in listed)  # results, history, cards
    assert len(widths) == n_photos >= len(picks) and min(widths) > 0, widths

    if rec.supports_new_items:
        browser.find_element("id", "new-id").send_keys("NEW-PAGE-1")
        browser.find_element("id", "new-text").send_keys("Soft cotton jersey top with long sleeves. Black.")
        browser.find_element("css selector", "#new-item-form button").click()
        wait_for(browser, lambda d: "ranks" in d.find_element("id", "new-rank").text, "the new item's rank")
        (ranked,), of = item_ranks(rec, picks, ["NEW-PAGE-1"], exclude_seen=False)
        assert browser.find_element("id", "new-rank").text.startswith(f"NEW-PAGE-1 ranks {ranked['rank']} of {of}")
        wait_for(browser, lambda d: f"· {rec.n_items} items" in d.find_element("id", "model").text, "one item more")

    browser.find_element("id", "exclude-seen").click()
    wait_for(browser, lambda d: card_ids(d) == [i for i, _ in rec.recommend(picks, k=k)], "seen items left out again")
    query = display.titles[rec.index[picks[0]]].split()[-1].lower()
    found, total = rec.item_display().search(query, 12, rec.popularity.numpy())
    browser.find_element("id", "search").clear()
    browser.find_element("id", "search").send_keys(query)
    listed = [str(rec.item_ids[i]) for i in found]
    wait_for(browser, lambda d: ids_in(d, "#results li") == listed, f"the {len(found)} best results for {query!r}")
    assert browser.find_element("id", "search-note").text.startswith(f"{total} item")
    assert not browser.find_element("id", "error").is_displayed()

    browser.execute_script("window.scrollTo(0, 0)")
    photos_rendered(browser)
    shot = tmp_path / "serving-page.png"
    save_screenshot(browser.get_screenshot_as_png(), shot)
    if os.environ.get("MP4SR_PAGE_SCREENSHOT"):
        shutil.copy(shot, os.environ["MP4SR_PAGE_SCREENSHOT"])


def save_screenshot(png: bytes, path: Path) -> None:
    """The screenshot with its colours reduced to a palette: a small file for the docs."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        assert image.size == WINDOW, image.size
        image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
