"""The search page as its users stay on it (issue 31), in headless Chromium over a folder of one's own A1111
generations: the filters panel (the index's columns; seeds past 2**53 compared exactly), the detail view and its copy
buttons, paging as the results' end nears, the keys, and the export button's training set. With
PROMPT_SEARCH_SCREENSHOTS=docs it also saves the README's pictures of the page (docs/page-filters.png,
docs/page-detail.png)."""

import io
import os
import time
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
from conftest import index_folder, run_script
from generations import NEGATIVE, a1111_text, png
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from test_gallery import browser  # noqa: F401  (the headless Chromium fixture)
from test_server import LOADED, running_server

from prompt_search.search.captions import caption

COUNT = 60  # a page and a half of results
PAGE = 40  # app.js's PAGE_SIZE: the cards a query shows before its next page
BASE_SEED = 2**64 - 100  # image i's seed is BASE_SEED + i: as JS numbers, all of them would be 2**64
SUBJECTS = ["robot", "corgi", "kangaroo", "castle", "city", "fruit", "lighthouse", "dragon", "forest", "teapot"]
STYLES = ["watercolor", "oil painting", "pixel art", "photo", "sketch", "neon"]
PLANTED = '<img src=x onerror="window.__pwned = 1"> a haunted teapot, "quoted"'  # shown as text, never run
SETTINGS = "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: {seed}, Size: 512x768, Model hash: 6ce0161689, " \
           "Model: v1-5-pruned-emaonly"  # a1111_text's, as A1111 writes them (no Schedule type: the API has none)
PNG = b"\x89PNG\r\n\x1a\n"
SHOWN_COLUMNS = "return [...document.querySelectorAll('#filters .filter')].filter((f) => !f.hidden)" \
                ".map((f) => f.dataset.column)"
CARD_IDS = "return [...document.querySelectorAll('#results > .card')].map((card) => card.title)"
PICTURE_LOADED = "const image = document.getElementById('detail-image');" \
                 "return image.complete && image.naturalWidth > 0"
READ_CLIPBOARD = "navigator.clipboard.readText().then(arguments[0], (error) => arguments[0]('refused: ' + error))"


def prompt_of(i: int) -> str:
    """Images 50-59 repeat the prompts of 40-49 (sketch): a prompt of two images, for one result per prompt."""
    return PLANTED if i == 0 else f"a {SUBJECTS[i % len(SUBJECTS)]} in {STYLES[min(i // len(SUBJECTS), 4)]} style"


@pytest.fixture(scope="module")
def own(tmp_path_factory, tiny_clip) -> tuple[Path, list[str]]:
    """Steps 1 (a folder of A1111 PNGs: file i.png, seed BASE_SEED + i), 3, 4, 3', 4' and 5 (the ONNX export)."""
    work = tmp_path_factory.mktemp("page")
    for i in range(COUNT):
        png(work / "images" / f"{i:02}.png", {"parameters": a1111_text(prompt_of(i), BASE_SEED + i)}, i)
    common = ["--IMG_DIR=images", "--OUT_DIR=out", f"--MODEL={tiny_clip}", "--NUM_WORKERS=0", "--BATCH_SIZE=16"]
    index_folder(work, *common)
    run_script("test_visual_knn_index.py", *common, "--INPUT_IMG_PATH=images/00.png", "--COMPARE_WITH_TORCH=False",
               cwd=work)
    return work, common


@pytest.fixture(scope="module")
def server(own):
    # A random tiny CLIP finds many of the pictures near-identical: without folding them each is a result of its own
    with running_server(*own, "--DEDUPE_THRESHOLD=1") as base:
        yield base


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where screenshots go: PROMPT_SEARCH_SCREENSHOTS's folder (docs, for the README), else the test's own."""
    folder = Path(os.environ.get("PROMPT_SEARCH_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(driver, path: Path) -> None:
    assert driver.save_screenshot(str(path)) and path.read_bytes()[:8] == PNG


def rerendered(driver) -> WebDriverWait:
    return WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException,))


def search(driver, server: str, text: str, index: str = "images") -> None:
    driver.get(server + "/")
    wait = WebDriverWait(driver, 30)
    wait.until(lambda d: d.find_element(By.ID, "filters").is_displayed())  # /health has answered
    driver.find_element(By.CSS_SELECTOR, f"input[name=index][value={index}]").click()
    driver.find_element(By.ID, "text").send_keys(text)
    rerendered(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results > .card")
                             and d.find_element(By.ID, "status").text.endswith(" ms"))


def shown_settings(dialog) -> dict[str, str]:
    terms = [term.text for term in dialog.find_elements(By.CSS_SELECTOR, "#detail-settings dt")]
    return dict(zip(terms, [value.text for value in dialog.find_elements(By.CSS_SELECTOR, "#detail-settings dd")],
                    strict=True))


def test_filters_offer_the_index_columns_and_bound_seeds_exactly(server, browser, shots):  # noqa: F811
    health = requests.get(f"{server}/health", timeout=10).json()["filters"]
    assert sorted(health["images"]) == ["adherence", "cfg_scale", "height", "prompt_group", "seed", "steps", "width"]
    search(browser, server, "a dragon")
    panel = browser.find_element(By.ID, "filters")
    assert not browser.find_element(By.ID, "seed-min").is_displayed()  # closed until asked
    panel.find_element(By.TAG_NAME, "summary").click()
    shown = browser.execute_script(SHOWN_COLUMNS)
    assert sorted(shown) == ["adherence", "cfg_scale", "height", "seed", "steps", "width"]  # no prompt_group, no date
    assert all(browser.find_element(By.ID, f"{column}-min").is_displayed() for column in shown)
    assert not browser.find_element(By.ID, "date-from").is_displayed()

    browser.find_element(By.CSS_SELECTOR, "input[name=index][value=prompts]").click()  # offered anew
    WebDriverWait(browser, 10).until(lambda d: not d.find_element(By.ID, "adherence-min").is_displayed())
    assert sorted(browser.execute_script(SHOWN_COLUMNS)) == ["cfg_scale", "height", "seed", "steps", "width"]
    browser.find_element(By.CSS_SELECTOR, "input[name=index][value=images]").click()

    low, high = BASE_SEED + 10, BASE_SEED + 12  # neighbours a JS number cannot tell apart
    browser.find_element(By.ID, "seed-min").send_keys(str(low))
    browser.find_element(By.ID, "seed-max").send_keys(str(high))
    rerendered(browser).until(lambda d: d.find_element(By.ID, "status").text.startswith("3 results"))
    details = [element.text for element in browser.find_elements(By.CSS_SELECTOR, "#results .details")]
    assert sorted(text.split(" ·")[0] for text in details) == [f"seed {seed}" for seed in range(low, high + 1)]
    assert browser.find_element(By.ID, "filter-count").text == "(1 set)"
    assert not browser.find_element(By.ID, "more").is_displayed()  # all three shown
    rerendered(browser).until(lambda d: d.execute_script(LOADED))
    screenshot(browser, shots / "page-filters.png")

    browser.find_element(By.ID, "seed-max").send_keys("x")  # the server's 422, shown as the page shows errors
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "status").get_attribute("class") == "error")
    assert "filters.seed.max" in browser.find_element(By.ID, "status").text
    browser.find_element(By.ID, "clear-filters").click()
    rerendered(browser).until(lambda d: d.find_element(By.ID, "status").text.startswith(f"{PAGE} results"))
    assert browser.find_element(By.ID, "filter-count").text == ""


def test_detail_view_shows_the_whole_result_and_copies_it(server, browser):  # noqa: F811
    browser.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": server, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    browser.set_script_timeout(10)
    search(browser, server, PLANTED, "prompts")
    dialog = browser.find_element(By.ID, "detail")
    assert not dialog.is_displayed()
    first = browser.find_element(By.CSS_SELECTOR, "#results > .card")
    assert first.get_attribute("title") == "00.png"  # its own prompt first
    first.find_element(By.TAG_NAME, "img").click()
    WebDriverWait(browser, 10).until(lambda d: dialog.is_displayed())
    assert browser.find_element(By.ID, "detail-prompt").text == PLANTED  # as text
    assert browser.execute_script("return window.__pwned") is None
    assert not dialog.find_elements(By.CSS_SELECTOR, "p img")
    assert browser.find_element(By.ID, "detail-negative").text == NEGATIVE
    settings = shown_settings(dialog)
    assert settings["Seed"] == str(BASE_SEED) and settings["Size"] == "512×768" and settings["Steps"] == "20"
    assert settings["Sampler"] == "DPM++ 2M" and settings["Model"] == "v1-5-pruned-emaonly"
    assert settings["Model hash"] == "6ce0161689" and settings["Tool"] == "a1111" and settings["File"] == "00.png"
    assert set(settings["Found by"].replace(",", "").split()[::2]) == {"CLIP", "words"}
    copied = {"copy-prompt": PLANTED, "copy-seed": str(BASE_SEED), "copy-settings": SETTINGS.format(seed=BASE_SEED)}
    for button, text in copied.items():
        browser.find_element(By.ID, button).click()
        WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "detail-note").text.endswith(" copied"))
        assert browser.execute_async_script(READ_CLIPBOARD) == text, button
        browser.execute_script("document.getElementById('detail-note').textContent = ''")

    browser.find_element(By.ID, "detail-next").click()  # the next result, in the cards' order
    second = browser.find_elements(By.CSS_SELECTOR, "#results > .card")[1].get_attribute("title")
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "detail-title").text == "#2")
    assert shown_settings(dialog)["File"] == second
    browser.find_element(By.ID, "detail-more").click()  # more like the second: it comes first
    WebDriverWait(browser, 10).until(lambda d: not dialog.is_displayed())
    assert browser.find_element(By.ID, "text").get_attribute("value") == ""
    rerendered(browser).until(lambda d: d.execute_script(CARD_IDS)[0] == second)


def test_paging_appends_the_next_results_as_their_end_nears(server, browser):  # noqa: F811
    search(browser, server, "a castle")
    assert len(browser.execute_script(CARD_IDS)) == PAGE
    assert browser.find_element(By.ID, "status").text.startswith(f"{PAGE} results")
    more = browser.find_element(By.ID, "more")
    assert more.is_displayed()
    browser.execute_script("arguments[0].scrollIntoView()", more)  # infinite scroll: no click needed
    rerendered(browser).until(lambda d: len(d.execute_script(CARD_IDS)) == COUNT)
    ids = browser.execute_script(CARD_IDS)
    assert sorted(ids) == [f"{i:02}.png" for i in range(COUNT)]  # the next page: the others, each once
    ranks = [rank.text for rank in browser.find_elements(By.CSS_SELECTOR, "#results .meta span:first-child")]
    assert ranks == [f"#{rank}" for rank in range(1, COUNT + 1)]
    assert browser.find_element(By.ID, "status").text.startswith(f"{COUNT} results")
    assert not more.is_displayed()  # a short page was the last

    browser.find_element(By.ID, "text").send_keys(" tower")  # a new query starts again at its first page
    rerendered(browser).until(lambda d: d.find_element(By.ID, "status").text.startswith(f"{PAGE} results"))
    assert len(browser.execute_script(CARD_IDS)) == PAGE and more.is_displayed()
    browser.execute_script("arguments[0].click()", more)  # the button itself (scrolled to, it is the observer's)
    rerendered(browser).until(lambda d: d.find_element(By.ID, "status").text.startswith(f"{COUNT} results"))
    assert sorted(browser.execute_script(CARD_IDS)) == [f"{i:02}.png" for i in range(COUNT)]


def test_keys_move_between_cards_and_open_and_close_the_detail(server, browser, shots):  # noqa: F811
    search(browser, server, "a robot")
    cards = browser.find_elements(By.CSS_SELECTOR, "#results > .card")
    columns = browser.execute_script("const cards = document.querySelectorAll('#results > .card');"
                                     "return [...cards].filter((card) => card.offsetTop === cards[0].offsetTop).length")
    assert columns > 1
    focused = lambda: browser.switch_to.active_element  # noqa: E731
    keys = ActionChains(browser)
    cards[0].find_element(By.CSS_SELECTOR, ".meta").click()  # focuses its card
    assert focused() == cards[0]
    keys.send_keys(Keys.ARROW_RIGHT).perform()
    assert focused() == cards[1]
    keys.send_keys(Keys.ARROW_DOWN).perform()
    assert focused() == cards[1 + columns]
    keys.send_keys(Keys.ARROW_UP).send_keys(Keys.ARROW_LEFT).perform()
    assert focused() == cards[0]
    keys.send_keys(Keys.ARROW_LEFT).send_keys(Keys.ARROW_UP).perform()  # nothing before the first
    assert focused() == cards[0]

    keys.send_keys(Keys.ENTER).perform()
    dialog = browser.find_element(By.ID, "detail")
    WebDriverWait(browser, 10).until(lambda d: dialog.is_displayed())
    assert browser.find_element(By.ID, "detail-title").text == "#1"
    WebDriverWait(browser, 10).until(lambda d: d.execute_script(PICTURE_LOADED))
    screenshot(browser, shots / "page-detail.png")
    keys.send_keys(Keys.ARROW_RIGHT).send_keys(Keys.ARROW_RIGHT).perform()
    assert browser.find_element(By.ID, "detail-title").text == "#3"
    keys.send_keys(Keys.ARROW_LEFT).perform()
    assert browser.find_element(By.ID, "detail-title").text == "#2"
    assert browser.find_element(By.ID, "detail-prompt").text == cards[1].find_element(By.CSS_SELECTOR, ".prompt").text
    keys.send_keys(Keys.ESCAPE).perform()
    WebDriverWait(browser, 10).until(lambda d: not dialog.is_displayed())
    WebDriverWait(browser, 10).until(lambda d: focused() == cards[1])  # back on the card last shown (on "close")

    keys.send_keys("/").perform()
    assert focused() == browser.find_element(By.ID, "text")
    assert browser.find_element(By.ID, "text").get_attribute("value") == "a robot"  # the "/" is not typed


def test_the_export_button_downloads_the_results_shown_as_a_training_set(own, server, browser, tmp_path):  # noqa: F811
    downloads = tmp_path / "downloads"
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    search(browser, server, "a lighthouse")
    button = browser.find_element(By.ID, "export")
    assert button.is_displayed() and button.text == f"Export {PAGE} as a training set"
    button.click()  # scrolled into view first: the next page may come in before the click, and is exported too
    zipped = downloads / "prompt-search-export.zip"
    deadline = time.monotonic() + 60
    while not zipped.exists() and time.monotonic() < deadline:  # Chromium renames its .crdownload when complete
        time.sleep(0.2)
    assert zipped.exists(), list(downloads.glob("*"))
    with zipfile.ZipFile(io.BytesIO(zipped.read_bytes())) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    rows = pq.read_table(io.BytesIO(files.pop("results.parquet"))).to_pylist()
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "status").text.startswith(f"exported {len(rows)}"))
    assert [row["id"] for row in rows] == browser.execute_script(CARD_IDS)  # what the page shows, in its order
    for row in rows:
        assert files[row["file"]] == (own[0] / "images" / row["id"]).read_bytes()  # the file itself
        assert files[row["file"].replace(".png", ".txt")].decode() == caption(row["prompt"], True)
        assert row["seed"] == BASE_SEED + int(row["id"].split(".")[0])  # exact, as the item table holds it
    assert len(files) == 2 * len(rows) and len(rows) in (PAGE, COUNT)


def test_one_result_per_prompt_opens_the_images_of_its_prompt(server, browser):  # noqa: F811
    search(browser, server, "a dragon in sketch style")
    browser.find_element(By.ID, "group").click()
    rerendered(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .prompt-images"))
    first = browser.find_element(By.CSS_SELECTOR, "#results > .card")
    assert first.get_attribute("title") in ("47.png", "57.png")  # the prompt's own words first, once
    assert "and 1 more of this prompt" in first.text and not browser.find_element(By.ID, "one-prompt").is_displayed()
    first.find_element(By.CSS_SELECTOR, ".prompt-images").click()
    rerendered(browser).until(lambda d: sorted(d.execute_script(CARD_IDS)) == ["47.png", "57.png"])
    assert browser.find_element(By.ID, "one-prompt").is_displayed()
    assert not browser.find_element(By.ID, "group").is_selected()
    browser.find_element(By.ID, "all-prompts").click()  # back to one per prompt
    rerendered(browser).until(lambda d: len(d.execute_script(CARD_IDS)) > 2)
    assert browser.find_element(By.ID, "group").is_selected()
    assert not browser.find_element(By.ID, "one-prompt").is_displayed()
    ids = browser.execute_script(CARD_IDS)
    assert len(ids) == len(set(ids)) and not {"47.png", "57.png"} <= set(ids)  # each prompt once
