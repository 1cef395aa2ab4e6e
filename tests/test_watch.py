"""serve.py --WATCH=True as a user runs it (make serve-own): a real server on loopback over a real folder, files
arriving as the generators and people write them, a SIGKILL mid-ingest and mid-fold, and the refusals."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from conftest import REPO, run_script
from generations import a1111_text, png
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_gallery import browser  # noqa: F401  (the headless Chromium fixture)

from prompt_search.search.core import open_sides


def a1111(path: Path, prompt: str, seed: int) -> Path:
    return png(path, {"parameters": a1111_text(prompt, seed)}, seed)


@contextmanager
def watching(work: Path, model: str, *extra: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """serve.py --WATCH=True over work/images into work/out; yields its URL and process, stops it afterwards."""
    process = subprocess.Popen(
        [sys.executable, str(REPO / "serve.py"), "--IMG_DIR=images", "--OUT_DIR=out", f"--MODEL={model}",
         "--NUM_WORKERS=0", "--BATCH_SIZE=4", "--WATCH=True", "--SERVE_PORT=0", *extra],
        cwd=work, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            found = re.search(r"search page: (http://127\.0\.0\.1:\d+)", line)
            if found:
                yield found.group(1), process
                break
        else:
            raise AssertionError("the server stopped:\n" + "".join(lines))
    finally:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=30)


def listed(base: str, side: str = "images") -> list[tuple[str, str]]:
    """(id, prompt) of every result the server gives, whatever the query."""
    answer = requests.post(f"{base}/api/search", json={"text": "anything", "index": side, "num_results": 200,
                                                        "dedupe": False}, timeout=30)
    assert answer.status_code == 200, answer.text
    return [(hit["id"], hit["prompt"]) for hit in answer.json()["results"]]


def wait_for(check, timeout: float = 30.0, what: str = "", seen=lambda: ""):
    """check()'s first true value, polled; fails after timeout saying what was awaited and, by seen(), what was."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout} s: {what} {seen()}"
        time.sleep(0.05)


def health(base: str) -> dict:
    return requests.get(f"{base}/health", timeout=10).json()["watch"]


@pytest.fixture
def folder(tmp_path) -> Path:
    for seed in range(4):
        a1111(tmp_path / "images" / f"first-{seed}.png", f"first picture {seed}", seed)
    return tmp_path


@pytest.mark.parametrize("mode", ["events", "polling every 0.5 s"])
def test_files_arriving_every_way_are_searchable_and_gone_ones_are_not(folder, tiny_clip, mode):
    """With the file system's events, and with polling (a network mount sends none; WATCH_POLL_S forces it)."""
    images = folder / "images"
    poll = ["--WATCH_POLL_S=0.5"] if mode != "events" else []
    with watching(folder, tiny_clip, *poll) as (base, _):  # first use: the batch steps build the index
        assert sorted(i for i, _ in listed(base)) == [f"first-{s}.png" for s in range(4)]
        # ComfyUI: written in place, in pieces
        data = a1111(folder / "comfy.png", "written in place", 10).read_bytes()
        with open(images / "comfy.png", "wb") as f:
            for start in range(0, len(data), len(data) // 3 + 1):
                f.write(data[start:start + len(data) // 3 + 1])
                f.flush()
                time.sleep(0.05)
        # A1111 and Forge: a temporary name, then renamed
        (images / "a1111.png.tmp").write_bytes(a1111(folder / "a1111.png", "written then renamed", 11).read_bytes())
        os.replace(images / "a1111.png.tmp", images / "a1111.png")
        # a burst of copies, into a subfolder made meanwhile
        sources = [a1111(folder / f"{seed}.png", f"burst picture {seed}", seed) for seed in range(20, 50)]
        (images / "burst").mkdir()
        for source in sources:
            shutil.copy(source, images / "burst" / source.name)
        wanted = {"comfy.png": "written in place", "a1111.png": "written then renamed",
                  **{f"burst/{s}.png": f"burst picture {s}" for s in range(20, 50)}}
        wait_for(lambda: wanted.items() <= dict(listed(base)).items(), what="new files found")
        # changed, renamed, deleted
        a1111(images / "first-0.png", "first picture changed", 60)
        os.replace(images / "first-1.png", images / "renamed.png")
        os.remove(images / "first-2.png")
        shutil.rmtree(images / "burst")

        def settled() -> bool:
            found = dict(listed(base))
            return (found.get("first-0.png") == "first picture changed" and "renamed.png" in found
                    and not {"first-1.png", "first-2.png"} & found.keys()
                    and not any(i.startswith("burst/") for i in found))

        wait_for(settled, what="changes and deletions taken in")
        ids = [i for i, _ in listed(base)]
        assert sorted(ids) == sorted(["first-0.png", "renamed.png", "first-3.png", "comfy.png", "a1111.png"])
        prompts = {"first picture changed", "first picture 1", "first picture 3", "written in place",
                   "written then renamed"}
        wait_for(lambda: {prompt for _, prompt in listed(base, "prompts")} == prompts, what="the prompts moved")
        thumbnail = requests.get(base + requests.post(f"{base}/api/search", json={"text": "a", "num_results": 1},
                                                      timeout=30).json()["results"][0]["thumbnail"], timeout=30)
        assert thumbnail.status_code == 200 and thumbnail.headers["Cache-Control"] == "no-cache"  # a fold renumbers
        state = health(base)
        assert state["mode"] == mode and state["generation"] > 0 and state["pending"] == 0
        assert state["delta"]["images"] > 0 and state["last_indexed"]["at"] and not state["error"]


def test_a_second_writer_is_refused_in_one_line_and_health_says_little_without_the_token(folder, tiny_clip):
    token = "a-token-of-sixteen-or-more"
    with watching(folder, tiny_clip, f"--SERVE_TOKEN={token}") as (base, _):
        open_health = requests.get(f"{base}/health", timeout=10).json()["watch"]
        private = requests.get(f"{base}/health", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
        assert "folder" not in open_health and "last_indexed" not in open_health and "generation" in open_health
        assert private["watch"]["folder"] == str(folder / "images")
        second = subprocess.run([sys.executable, str(REPO / "serve.py"), "--IMG_DIR=images", "--OUT_DIR=out",
                                 f"--MODEL={tiny_clip}", "--WATCH=True", "--SERVE_PORT=0"], cwd=folder,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode != 0 and "is writing this set" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        step = run_script("extract_metadata_from_images.py", "--IMG_DIR=images", "--OUT_DIR=out", cwd=folder,
                          check=False)
        assert step.returncode != 0 and "is writing this set" in step.stderr


def consistent(work: Path, model: str) -> None:
    """Every published set whole: each index's item table, vectors and index agree (open_sides checks them)."""
    sides = open_sides(str(work / "out"), model)
    for searched in sides.values():
        assert len(searched.items) == len(searched.vectors) == searched.index.ntotal


@pytest.mark.parametrize("moment", ["ingest", "fold"])
def test_killed_mid_ingest_or_mid_fold_restarts_and_catches_up(folder, tiny_clip, moment):
    images = folder / "images"
    extra = ["--WATCH_COMPACT_ITEMS=8"] if moment == "fold" else []
    with watching(folder, tiny_clip, *extra) as (base, process):
        for seed in range(100, 140):
            a1111(images / f"new-{seed}.png", f"new picture {seed}", seed)
        if moment == "fold":
            wait_for(lambda: health(base)["compacting"], what="a fold under way")
        else:
            wait_for(lambda: health(base)["generation"] > 1, what="ingest under way")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    consistent(folder, tiny_clip)
    with watching(folder, tiny_clip, *extra) as (base, _):
        wanted = sorted([f"first-{s}.png" for s in range(4)] + [f"new-{s}.png" for s in range(100, 140)])
        wait_for(lambda: sorted(i for i, _ in listed(base)) == wanted, what="every image once after the restart",
                 seen=lambda: f"{sorted(i for i, _ in listed(base))} {health(base)}")
        wanted = sorted([f"first picture {s}" for s in range(4)] + [f"new picture {s}" for s in range(100, 140)])
        wait_for(lambda: sorted(prompt for _, prompt in listed(base, "prompts")) == wanted, what="every prompt once")
        if moment == "fold":  # and the restarted server folds too, with no error
            wait_for(lambda: health(base)["delta"]["images"] < 8 and not health(base)["compacting"], what="a fold")
            assert not health(base)["error"]
    consistent(folder, tiny_clip)


def test_the_page_says_when_new_images_arrived(folder, tiny_clip, browser):  # noqa: F811
    with watching(folder, tiny_clip) as (base, _):
        browser.get(base + "/")
        wait = WebDriverWait(browser, 30)
        browser.find_element(By.ID, "text").send_keys("first picture")

        def shown(driver) -> int:
            """Images the results stand for: each card, and those folded into it as near-identical."""
            return driver.execute_script(  # in one go: the results may be replaced between two reads
                "const alike = [...document.querySelectorAll('#results .alike')]"
                "  .map((e) => +e.textContent.split(' ')[1]);"
                "return document.querySelectorAll('#results .card').length + alike.reduce((a, b) => a + b, 0);")

        wait.until(lambda d: shown(d) == 4, "the four images")
        assert not browser.find_element(By.ID, "fresh").is_displayed()
        a1111(folder / "images" / "arrived.png", "a picture that arrived", 77)
        wait.until(lambda d: d.find_element(By.ID, "fresh").is_displayed(), "the notice")
        browser.find_element(By.ID, "refresh").click()
        wait.until(lambda d: shown(d) == 5, "the new image among the results")
        assert not browser.find_element(By.ID, "fresh").is_displayed()
