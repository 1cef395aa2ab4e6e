"""The server among other clients (issue 27): clip-retrieval's own web front, served from the installed package on a
second loopback port, in headless Chromium (CORS_ORIGINS, /metadata, absolute thumbnail URLs); and SERVE_TOKEN's
login, by API and in a real browser, with the start-up refusal beyond loopback. Over a folder of one's own
generations: its images have no URL, only the server's thumbnails can show them."""

import functools
import http.server
import importlib.util
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import index_folder, run_script
from generations import a1111_text, png
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_gallery import browser  # noqa: F401  (the headless Chromium fixture)
from test_server import LOADED, running_server

from prompt_search.search.access import is_loopback

PROMPTS = ["a blue robot on a red background", "a corgi astronaut on the moon", "portrait of a kangaroo",
           "a castle in the clouds", "neon city at night", "a bowl of fruit"]  # under 50 characters: shown whole
TOKEN = "correct horse battery staple"
# The front's result cards, inside its shadow root: each one's image and caption.
CARDS = """
const root = document.querySelector("clip-front")?.shadowRoot;
return root ? [...root.querySelectorAll("#products figure")].map((figure) => {
  const img = figure.querySelector("img.pic"), caption = figure.querySelector("figcaption");
  return {src: img.src, loaded: img.complete && img.naturalWidth > 0,
          caption: caption ? caption.textContent.trim() : ""};
}) : [];
"""
SEARCH_OVER_TEXT = """
const root = document.querySelector("clip-front").shadowRoot;
const select = [...root.querySelectorAll("select")]
  .find((s) => [...s.options].map((o) => o.value).join() === "image,text");
select.value = "text";
select.dispatchEvent(new Event("input"));
"""


@pytest.fixture(scope="module")
def own(tmp_path_factory, tiny_clip) -> tuple[Path, list[str]]:
    """Steps 1 (a folder of A1111 PNGs), 3, 4, 3', 4' and 5 (the ONNX export)."""
    work = tmp_path_factory.mktemp("access")
    for seed, prompt in enumerate(PROMPTS):
        png(work / "images" / f"{seed}.png", {"parameters": a1111_text(prompt, seed)}, seed)
    common = ["--IMG_DIR=images", "--OUT_DIR=out", f"--MODEL={tiny_clip}", "--NUM_WORKERS=0", "--BATCH_SIZE=4"]
    index_folder(work, *common)
    run_script("test_visual_knn_index.py", *common, "--INPUT_IMG_PATH=images/0.png", "--COMPARE_WITH_TORCH=False",
               cwd=work)
    return work, common


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def front() -> Iterator[str]:
    """clip-retrieval's web front (its static build, from the installed package) on a loopback port of its own."""
    package = importlib.util.find_spec("clip_retrieval")
    assert package, "clip-retrieval is not installed: pip install --no-deps -r requirements-dev-nodeps.txt"
    build = Path(package.submodule_search_locations[0]).parent / "front" / "build"
    assert (build / "index.html").is_file(), f"no front build at {build}"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(build)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def front_page(front: str, back: str, query: str) -> str:
    return f"{front}/?" + urllib.parse.urlencode({"back": back, "index": "prompt-search", "query": query})


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def shown(driver, first_caption: str | None = None) -> list[dict] | None:
    """The front's cards once shown with their images loaded (and the first captioned so), else None."""
    cards = driver.execute_script(CARDS)
    complete = cards and all(card["loaded"] and card["caption"] for card in cards)
    return cards if complete and first_caption in (None, cards[0]["caption"]) else None


def errors_but_the_fronts_own(driver, front: str) -> list[str]:
    """The console's errors, but for the two files the front's page asks of its own server and its package lacks."""
    lacking = tuple(f"{front}/{name} " for name in ("vendor/webcomponents-loader.js", "favicon.ico"))
    return [error for error in console_errors(driver) if not error.startswith(lacking)]


def test_clip_retrievals_front_shows_images_and_captions_for_both_indices(own, front, browser):  # noqa: F811
    with running_server(*own, f"--CORS_ORIGINS={front}") as back:
        browser.get(front_page(front, back, PROMPTS[3]))
        wait = WebDriverWait(browser, 60)
        over_images = wait.until(shown)  # near-identical pictures of the random model are shown as one
        assert {card["caption"] for card in over_images} <= set(PROMPTS)
        assert all(card["src"].startswith(f"{back}/thumbnail/images/") for card in over_images)
        browser.execute_script(SEARCH_OVER_TEXT)
        over_prompts = wait.until(lambda d: shown(d, first_caption=PROMPTS[3]))  # the prompt itself first
        assert all(card["src"].startswith(f"{back}/thumbnail/images/") for card in over_prompts)
        assert errors_but_the_fronts_own(browser, front) == []


def test_the_front_is_refused_without_cors_origins(own, front, browser):  # noqa: F811
    with running_server(*own) as back:
        browser.get(front_page(front, back, PROMPTS[3]))
        errors = WebDriverWait(browser, 60).until(
            lambda d: [error for error in console_errors(d) if "blocked by CORS policy" in error])
        assert "No 'Access-Control-Allow-Origin' header" in errors[0] and browser.execute_script(CARDS) == []


def test_metadata_and_absolute_urls(own):
    with running_server(*own, "--SERVE_URL=https://search.example/base") as back:
        found = requests.post(f"{back}/knn-service", json={"text": PROMPTS[1], "modality": "text", "num_images": 2},
                              timeout=30).json()
        assert found[0]["caption"] == PROMPTS[1] and found[0]["url"].startswith("https://search.example/base/thumbnail/")
        ids = [hit["id"] for hit in found]
        asked = {"ids": [*ids, "no such id"], "indice_name": "prompt-search"}
        described = requests.post(f"{back}/metadata", json=asked, timeout=30).json()
        assert [item["id"] for item in described] == ids
        assert described[0]["metadata"]["caption"] == PROMPTS[1] and described[0]["metadata"]["url"] == found[0]["url"]
        api = requests.post(f"{back}/api/search", json={"text": PROMPTS[1]}, headers={"Host": "localhost"}, timeout=30)
        assert api.json()["results"][0]["url"].startswith("https://search.example/base/thumbnail/images/")


ENDPOINTS = [("GET", "/", None), ("GET", "/static/app.js", None), ("GET", "/gallery.css", None),
             ("GET", "/thumbnail/images/0", None), ("GET", "/indices-list", None),
             ("POST", "/knn-service", {"text": "a castle"}), ("POST", "/metadata", {"ids": []}),
             ("POST", "/api/search", {"text": "a castle"}),
             ("POST", "/api/export", {"text": "a castle", "num_results": 2})]


def call(base: str, method: str, path: str, body: dict | None, **headers: str) -> requests.Response:
    return requests.request(method, base + path, json=body, headers=headers, timeout=30, allow_redirects=False)


def test_with_a_token_every_endpoint_but_health_needs_it(own):
    with running_server(*own, f"--SERVE_TOKEN={TOKEN}") as base:
        for method, path, body in ENDPOINTS:
            refused = call(base, method, path, body)
            assert refused.status_code == 401, (path, refused.text)
            assert call(base, method, path, body, Authorization=f"Bearer {TOKEN}").status_code == 200, path
        assert "<form" in call(base, "GET", "/", None).text  # the page asks for the token
        stuffed = requests.post(f"{base}/login", data="&".join(f"f{i}=x" for i in range(9)), timeout=10)
        assert stuffed.status_code == 400 and "one field" in stuffed.json()["error"]
        assert requests.get(f"{base}/health", timeout=10).status_code == 200


def test_wrong_tokens_are_rate_limited(own):
    with running_server(*own, f"--SERVE_TOKEN={TOKEN}") as base:
        for _ in range(5):
            assert call(base, "GET", "/indices-list", None, Authorization="Bearer wrong").status_code == 401
        waiting = call(base, "GET", "/indices-list", None, Authorization=f"Bearer {TOKEN}")
        assert waiting.status_code == 429 and "too many wrong tokens" in waiting.json()["error"]
        login = requests.post(f"{base}/login", data={"token": TOKEN}, timeout=10, allow_redirects=False)
        assert login.status_code == 429 and "Retry-After" in login.headers


def test_the_page_logs_in_with_a_cookie_only_the_page_can_use(own, browser):  # noqa: F811
    with running_server(*own, f"--SERVE_TOKEN={TOKEN}") as base:
        # the login form posts and the browser loads a new page: an element read mid-load goes stale
        wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
        browser.get(base + "/")
        browser.find_element(By.ID, "token").send_keys("not the token at all")
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        wait.until(lambda d: "not this server's" in d.find_element(By.ID, "login-error").text)
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        wait.until(lambda d: d.find_elements(By.ID, "text"))
        browser.find_element(By.ID, "text").send_keys(PROMPTS[3])
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card img"))
        wait.until(lambda d: d.execute_script(LOADED))  # thumbnails too come with the cookie
        cookie = browser.get_cookies()[0]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
        assert browser.execute_script("return document.cookie") == ""


def test_no_start_beyond_loopback_without_a_token(tmp_path):
    refused = run_script("serve.py", "--SERVE_HOST=0.0.0.0", cwd=tmp_path, check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "SERVE_HOST=0.0.0.0" in refused.stderr and "SERVE_TOKEN" in refused.stderr and "SERVE_OPEN" in refused.stderr
    short = run_script("serve.py", "--SERVE_HOST=0.0.0.0", "--SERVE_TOKEN=short", cwd=tmp_path, check=False)
    assert short.returncode == 1 and "at least 16 printable characters" in short.stderr
    assert [is_loopback(host) for host in ("127.0.0.1", "127.8.0.1", "::1", "localhost", "0.0.0.0", "::",
                                           "192.168.1.20", "mypc.lan")] == [True] * 4 + [False] * 4
