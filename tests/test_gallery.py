"""results.html: escaped, script-free, and checked in real headless Chromium (Debian's chromium + chromedriver)."""

import functools
import http.server
import os
import shutil
import threading
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from prompt_search.search.core import Hit, Query
from prompt_search.search.gallery import write_gallery

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCRIPT_PROMPT = "<script>window.__pwned=1</script>"
ATTRIBUTE_PROMPT = '"><img src=x onerror="window.__pwned=1">'


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def image_server(tmp_path):
    """A loopback http server for tmp_path/served, so a result with only a URL loads a real remote image."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser(tmp_path):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    assert not missing, f"{missing} not installed: `make browser` installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1800", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for tests that read it
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _png(path: Path, color: str, size: tuple[int, int] = (96, 72)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _queries(tmp_path: Path, base_url: str, served: Path) -> list[Query]:
    """A text and an image query whose hits cover every way a thumbnail and a link are found, or refused."""
    _png(tmp_path / "imgs" / "red #1.png", "red")  # '#' and ' ' must be URL-quoted in src
    green = _png(tmp_path / "imgs" / "green.png", "green")
    _png(served / "blue.png", "blue")
    _png(served / "gold.png", "gold")
    _png(tmp_path / "imgs" / "query.png", "purple", (120, 120))
    vector = np.zeros(2, np.float32)
    text = Query("text", "a red square", vector, note="a test note")
    text.hits["images"] = [
        Hit(1, 0.9123, "a", "a red square", "https://example.invalid/red.png", "imgs/red #1.png"),  # relative to cwd
        Hit(2, 0.8, "b", SCRIPT_PROMPT, "", str(green)),
        Hit(3, 0.7, "c", "only a URL", f"{base_url}/blue.png"),
        Hit(4, 0.6, "d", "downloaded image gone", f"{base_url}/blue.png", "imgs/missing.png"),
        Hit(5, 0.5, "e", ATTRIBUTE_PROMPT, "javascript:window.__pwned=1"),
    ]
    text.hits["prompts"] = [
        Hit(1, 0.95, "f", ATTRIBUTE_PROMPT, f"{base_url}/gold.png"),
        Hit(2, 0.85, "g", "no picture at all", "javascript:window.__pwned=1"),
    ]
    image = Query("image", "imgs/query.png", vector)
    image.hits["images"] = [Hit(1, 0.99, "h", "green", "", str(green)), Hit(2, 0.4, "a", "red", "", "imgs/red #1.png")]
    return [text, image]


CARDS = 9
THUMBNAILS = 8  # 7 result thumbnails (not the two javascript: ones) and the query image
LINKS = 4  # the https and loopback URLs; never the javascript: ones


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append((tag, dict(attrs)))


def test_gallery_escapes_everything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "out" / "results.html"
    write_gallery(_queries(tmp_path, "http://127.0.0.1:9", tmp_path / "served"), str(page))
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in text
    parser = _Tags()
    parser.feed(text)
    tags = [tag for tag, _ in parser.tags]
    assert "script" not in tags and tags.count("img") == THUMBNAILS and tags.count("li") == CARDS
    for tag, attrs in parser.tags:
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        if "href" in attrs:
            assert attrs["href"].startswith(("http://", "https://")), attrs
        if "src" in attrs:  # remote, or relative to the page's folder with ' ' and '#' quoted
            assert attrs["src"].startswith(("http://", "../imgs/")) and " " not in attrs["src"], attrs
    assert 'src="../imgs/red%20%231.png"' in text
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not list(page.parent.glob("*.partial"))


def test_gallery_in_headless_chromium(tmp_path, monkeypatch, image_server, browser):
    served, base_url = image_server
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "out" / "results.html"
    write_gallery(_queries(tmp_path, base_url, served), str(page))

    browser.get(page.as_uri())
    WebDriverWait(browser, 20).until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete)"))

    assert browser.execute_script("return typeof window.__pwned") == "undefined"
    assert len(browser.find_elements(By.CSS_SELECTOR, "li.card")) == CARDS
    widths = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
    assert len(widths) == THUMBNAILS
    assert all(width > 0 for _, width in widths), widths
    assert any(src.startswith(base_url) for src, _ in widths)  # the URL fallback really loaded over http
    visible = browser.find_element(By.TAG_NAME, "body").text
    assert SCRIPT_PROMPT in visible and ATTRIBUTE_PROMPT in visible
    hrefs = browser.execute_script("return Array.from(document.links).map(a => a.getAttribute('href'))")
    assert len(hrefs) == LINKS and all(href.startswith(("http://", "https://")) for href in hrefs), hrefs

    screenshot = tmp_path / "gallery.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.path.getsize(screenshot) > 1000
    with Image.open(screenshot) as shot:
        assert shot.width > 0 and shot.height > 0
