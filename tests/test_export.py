"""Export (issue 31): a query's results as a kohya training set, by export_results.py into a new folder and by
POST /api/export as a zip. Over a folder of generations the real tools wrote (tests/fixtures/generations) and a few
A1111 PNGs whose prompts carry weights and LoRA tags; and over open-prompts rows whose images are fetched from a
loopback server by step 2's rules (an X-Robots-Tag opt-out, a redirect to ftp, a 404, a page that is no image,
a body cut short, a reply that is no HTTP, a GIF converted to PNG, a slow one)."""

import http.server
import io
import json
import os
import re
import shutil
import stat
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
from conftest import index_folder, index_prompts, make_image, run_script, write_open_prompts_csv
from generations import a1111_text, png
from PIL import Image
from test_server import post, running_server

from prompt_search.items import ItemTable
from prompt_search.layout import ITEMS_FILE
from prompt_search.search.captions import caption

FIXTURES = Path(__file__).parent / "fixtures" / "generations"
# Prompts as A1111 users write them: weights, emphasis, escaped brackets, LoRA and hypernetwork tags, BREAK
WEIGHTED = {
    "(masterpiece:1.2), ((a castle in the clouds)), <lora:add_detail:0.8>, [blurry]":
        "masterpiece, a castle in the clouds, blurry",
    "a (red:1.5) fox BREAK snow, <hypernet:anime:1>, \\(watercolor\\)": "a red fox, snow, (watercolor)",
    "portrait of a kangaroo, {{nai style}}, <LoRA:x>": "portrait of a kangaroo, nai style",
}
NAME = re.compile(r"1_prompt-search/[0-9]{4}\.(png|jpg|webp|txt)|results\.parquet")


@pytest.mark.parametrize(("prompt", "expected"), [
    *WEIGHTED.items(), ("  a plain prompt ", "a plain prompt"), ("a (b:.5) c, , d", "a b c, d"),
    ("((a (b:1.1):1.2) c)", "a b c"),  # nested weights
    ("[castle:forest:0.5], [cat|dog], [hat::10], [moon:5]", "forest, cat, dog, moon"),  # what the last steps drew
    ("aspect ratio 16:9, 1,000 soldiers, a sign saying :3)", "aspect ratio 16:9, 1,000 soldiers, a sign saying :3"),
])
def test_captions_lose_weights_and_network_tags(prompt, expected):
    assert caption(prompt, strip_weights=True) == expected
    assert caption(prompt, strip_weights=False) == prompt.strip()


def test_a_caption_is_one_line():  # kohya reads a caption file's first line only
    prompt = "masterpiece, best quality\nBREAK\na castle, (red:1.2) flags"
    assert caption(prompt, strip_weights=True) == "masterpiece, best quality, a castle, red flags"
    assert caption(prompt, strip_weights=False) == "masterpiece, best quality, BREAK, a castle, (red:1.2) flags"


@pytest.fixture(scope="module")
def own(tmp_path_factory, tiny_clip) -> tuple[Path, list[str]]:
    """Steps 1, 3, 4, 3' and 4' over the real tools' files and three weighted A1111 PNGs, and a PNG outside the
    folder reached by a link inside it."""
    work = tmp_path_factory.mktemp("export")
    shutil.copytree(FIXTURES, work / "images", ignore=shutil.ignore_patterns("*.md"))
    for seed, prompt in enumerate(WEIGHTED):
        png(work / "images" / "mine" / f"{seed}.png", {"parameters": a1111_text(prompt, 2**64 - 1 - seed)}, seed)
    make_image(work / "secret.png", (64, 64), "RGB", 9)
    (work / "images" / "link.png").symlink_to(work / "secret.png")
    common = ["--IMG_DIR=images", "--OUT_DIR=out", f"--MODEL={tiny_clip}", "--NUM_WORKERS=0", "--BATCH_SIZE=4"]
    index_folder(work, *common)
    return work, common


def images_by_id(work: Path) -> dict[str, Path]:
    items = ItemTable(str(work / "out" / "knn_indices" / "visual" / ITEMS_FILE))
    return {row["id"]: work / row["path"] for row in items.rows(range(len(items)))}  # paths as given: IMG_DIR=images


def check_export(files: dict[str, bytes], originals: dict[str, Path], work: Path, strip: bool) -> list[dict]:
    """Every name is the layout's; each image is its original's bytes, each caption its prompt; the file reached by
    a link out of the folder is never exported. Returns results.parquet's rows."""
    assert all(NAME.fullmatch(name) for name in files), sorted(files)
    rows = pq.read_table(io.BytesIO(files["results.parquet"])).to_pylist()
    secret = (work / "secret.png").read_bytes()
    assert secret not in files.values()
    for row in rows:
        if row["file"] is None:
            assert row["skipped"] and row["id"] == "link.png", row
            continue
        assert files[row["file"]] == originals[row["id"]].read_bytes()
        stem = row["file"].rsplit(".", 1)[0]
        assert files[stem + ".txt"].decode() == caption(row["prompt"], strip) == row["caption"]
    return rows


def test_the_script_writes_a_new_folder_and_never_into_an_existing_one(own):
    work, common = own
    args = [*common, "--INPUT_PROMPT=a castle in the clouds", "--NUM_RESULTS=30", "--DEDUPE_THRESHOLD=1",
            "--EXPORT_DIR=set", "--SEARCH_MODE=semantic"]
    done = run_script("export_results.py", *args, cwd=work)
    folder = work / "set"
    files = {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    rows = check_export(files, images_by_id(work), work, strip=True)
    assert len(rows) == len(images_by_id(work)) and [row["rank"] for row in rows] == list(range(1, len(rows) + 1))
    weighted = {row["caption"]: row for row in rows if row["prompt"] in WEIGHTED}
    assert set(weighted) == set(WEIGHTED.values())  # the stripped captions of the weighted prompts
    assert {row["seed"] for row in weighted.values()} == {2**64 - 1 - seed for seed in range(len(WEIGHTED))}
    duck = next(row for row in rows if row["prompt"] == "photo of a duck")  # A1111's own file
    assert (duck["negative_prompt"], duck["sampler"], duck["seed"]) == ("monochrome", "UniPC", 235284042)
    assert f"{len(rows) - 1} of {len(rows)} results exported" in done.stdout and "1 skipped" in done.stdout
    assert [path.name for path in work.iterdir() if ".partial-" in path.name] == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask  # as any folder the user makes (not mkdtemp's 0700)
    again = run_script("export_results.py", *args, cwd=work, check=False)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "exists" in again.stderr, again.stderr
    assert {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()} == set(files)
    gone = subprocess.Popen(["true"])  # a process that has ended: what a killed export of its own left is removed
    gone.wait()
    (work / f".set2.partial-{gone.pid}" / "1_prompt-search").mkdir(parents=True)
    run_script("export_results.py", *common, "--INPUT_PROMPT=a castle", "--NUM_RESULTS=2", "--EXPORT_DIR=set2",
               cwd=work)
    assert [path.name for path in work.iterdir() if ".partial-" in path.name] == []
    assert len(list((work / "set2" / "1_prompt-search").iterdir())) == 4
    too_many = run_script("export_results.py", *common, "--NUM_RESULTS=5", "--MAX_EXPORT=4", "--EXPORT_DIR=other",
                          cwd=work, check=False)
    assert too_many.returncode == 1 and "MAX_EXPORT=4" in too_many.stderr and not (work / "other").exists()


def test_the_api_streams_the_same_results_as_a_zip(own):
    work, common = own
    query = {"text": "a castle in the clouds", "index": "images", "sort": "adherence", "group": "prompt",
             "filters": {"adherence": {"min": -1}}, "num_results": 12}
    with running_server(work, common, "--MAX_EXPORT=20") as base:
        shown = post(base, "/api/search", **query).json()["results"]
        answer = post(base, "/api/export", **query, strip_weights=False)
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
        assert "attachment" in answer.headers["content-disposition"]
        refused = post(base, "/api/export", **{**query, "num_results": 21})
        assert refused.status_code == 422 and "from 1 to 20" in refused.json()["error"]
        assert post(base, "/api/export", **{**query, "num_results": 401}).status_code == 422
        as_text = requests.post(f"{base}/api/export", data=json.dumps(query), timeout=30,
                                headers={"Content-Type": "text/plain"})  # what a page elsewhere may send unasked
        assert as_text.status_code == 415 and "application/json" in as_text.json()["error"]
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert archive.testzip() is None
        files = {name: archive.read(name) for name in archive.namelist()}
    rows = check_export(files, images_by_id(work), work, strip=False)
    assert [row["id"] for row in rows] == [hit["id"] for hit in shown]  # what the page shows, in its order
    assert [row["adherence"] for row in rows] == sorted((row["adherence"] for row in rows), reverse=True)


class _Links(http.server.BaseHTTPRequestHandler):
    """Each way a link can fail step 2's rules, one that passes, and one that passes slowly."""
    image = b""
    gif = b""
    slow = threading.Event()  # set when the slow link is asked for

    def do_GET(self):  # noqa: N802 (http.server's name)
        headers, body, status = {"Content-Type": "image/png"}, self.image, 200
        if self.path == "/garbled.png":  # no HTTP at all
            self.wfile.write(b"this is not HTTP\r\n\r\n")
            return
        if self.path == "/cut.png":  # the connection closes before the body declared has come
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.image)))
            self.end_headers()
            self.wfile.write(self.image[: len(self.image) // 2])
            self.close_connection = True
            return
        if self.path == "/gif.png":  # a GIF, which kohya does not read
            body = self.gif
        elif self.path == "/slow.png":
            self.slow.set()
            time.sleep(2)
        elif self.path == "/opted-out.png":
            headers["X-Robots-Tag"] = "noindex, noai"
        elif self.path == "/to-ftp.png":
            headers, body, status = {"Location": "ftp://127.0.0.1/x.png"}, b"", 302
        elif self.path == "/page.png":
            headers, body = {"Content-Type": "text/html"}, b"<html>not an image</html>"
        elif self.path != "/ok.png":
            headers, body, status = {}, b"", 404
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_links_are_fetched_by_the_download_steps_rules(tmp_path, tiny_clip):
    _Links.image = make_image(tmp_path / "ok.png", (80, 60)).read_bytes()
    Image.open(tmp_path / "ok.png").convert("P").save(tmp_path / "ok.gif")
    _Links.gif = (tmp_path / "ok.gif").read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Links)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    reasons = {"ok": None, "slow": None, "gif": None, "opted-out": "opts its images out",
               "to-ftp": "not an http(s) link", "missing": "Not Found", "page": "not an image",
               "cut": "cut short", "garbled": "not HTTP"}
    common = ["--OUT_DIR=out", f"--MODEL={tiny_clip}", "--BATCH_SIZE=4"]
    query = {"text": "a picture", "index": "prompts", "num_results": len(reasons), "dedupe": False}
    try:
        write_open_prompts_csv(tmp_path / "links.csv", [(f"a picture {name}", f"{base}/{name}.png")
                                                        for name in reasons])
        index_prompts(tmp_path, "links.csv", *common)
        run_script("export_results.py", *common, "--EXPORT_INDEX=prompts", "--INPUT_PROMPT=a picture",
                   f"--NUM_RESULTS={len(reasons)}", "--DEDUPE_THRESHOLD=1", "--EXPORT_DIR=fetched",
                   "--DOWNLOAD_TIMEOUT=5", cwd=tmp_path)
        with running_server(tmp_path, common) as api:  # one export at a time: another meanwhile is refused
            _Links.slow.clear()
            first = {}
            sending = threading.Thread(target=lambda: first.update(answer=post(api, "/api/export", **query)))
            sending.start()
            assert _Links.slow.wait(30)  # the first export is fetching its slow link
            refused = post(api, "/api/export", **query)
            sending.join(60)
            assert refused.status_code == 429 and "one at a time" in refused.json()["error"]
            assert first["answer"].status_code == 200 and post(api, "/api/export", **query).status_code == 200
    finally:
        server.shutdown()
        server.server_close()
    rows = pq.read_table(tmp_path / "fetched" / "results.parquet").to_pylist()
    with zipfile.ZipFile(io.BytesIO(first["answer"].content)) as archive:
        assert pq.read_table(io.BytesIO(archive.read("results.parquet"))).to_pylist() == rows  # script and API alike
    by_name = {row["prompt"].removeprefix("a picture "): row for row in rows}
    assert set(by_name) == set(reasons)
    for name, reason in reasons.items():
        row = by_name[name]
        assert (row["skipped"] is None) if reason is None else (reason in row["skipped"]), row
    ok = tmp_path / "fetched" / by_name["ok"]["file"]
    assert ok.read_bytes() == _Links.image and ok.with_suffix(".txt").read_text() == "a picture ok"
    converted = tmp_path / "fetched" / by_name["gif"]["file"]  # as PNG, the same pixels
    assert converted.suffix == ".png" and Image.open(converted).format == "PNG"
    assert Image.open(converted).convert("RGB").tobytes() == Image.open(tmp_path / "ok.gif").convert("RGB").tobytes()
    exported = sorted(path.name for path in (tmp_path / "fetched" / "1_prompt-search").iterdir())
    assert exported == sorted(f"{by_name[name]['file'].split('/')[1].split('.')[0]}{suffix}"
                              for name in ("ok", "slow", "gif") for suffix in (".png", ".txt"))
