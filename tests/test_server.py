"""serve.py (step 6) as a user runs it: a subprocess on a free loopback port, without torch, over real indices of a
tiny CLIP; answered by a real HTTP client, clip-retrieval's ClipClient, and headless Chromium."""

import base64
import concurrent.futures
import importlib.util
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from conftest import REPO, index_prompts, make_image, run_script, serve, write_open_prompts_csv
from PIL import Image
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_fast_query import WITHOUT_TORCH
from test_gallery import browser  # noqa: F401  (the headless Chromium fixture)

from prompt_search.items import ItemTable
from prompt_search.layout import ITEMS_FILE

SCRIPT_PROMPT = "<script>window.__pwned=1</script> a planted prompt"
PROMPTS = ["a blue robot on a red background", "a corgi astronaut on the moon", "portrait of a kangaroo",
           "a castle in the clouds", "neon city at night", SCRIPT_PROMPT, "a red car in the rain", "a bowl of fruit"]
# A file dropped on the page, as a browser's drop event carries it (selenium cannot drag from the desktop).
DROP_IMAGE = """
const [url, done] = arguments;
fetch(url).then((r) => r.blob()).then((blob) => {
  const data = new DataTransfer();
  data.items.add(new File([blob], "dropped.jpg", {type: "image/jpeg"}));
  document.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
  done(true);
});
"""
LOADED = "return [...document.querySelectorAll('#results .card img')].every((i) => i.complete && i.naturalWidth > 0)"


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_clip) -> tuple[Path, list[str]]:
    """Steps 1 to 5 on a few generated pictures: both indices and the ONNX export exist."""
    work = tmp_path_factory.mktemp("serve")
    served = work / "served"
    for seed in range(len(PROMPTS)):
        make_image(served / f"{seed}.png", (256, 320), "RGB", seed)
    common = ["--OUT_DIR=out", f"--MODEL={tiny_clip}", "--BATCH_SIZE=4", "--NUM_WORKERS=0"]
    with serve(served) as base:
        write_open_prompts_csv(work / "prompts.csv", [(p, f"{base}/{i}.png") for i, p in enumerate(PROMPTS)])
        run_script("extract_img_links_from_csv.py", "--CSV_FILE=prompts.csv", *common, cwd=work)
        run_script("download_images.py", "--DOWNLOAD_THREADS=4", *common, cwd=work)
    for script in ("extract_visual_clip_embeddings.py", "create_visual_knn_indices.py",
                   "extract_textual_clip_embeddings.py", "create_textual_knn_indices.py"):
        run_script(script, *common, cwd=work)
    query_image = sorted((work / "out" / "images").rglob("*.jpg"))[0]
    run_script("test_visual_knn_index.py", *common, f"--INPUT_IMG_PATH={query_image}", "--COMPARE_WITH_TORCH=False",
               cwd=work)
    (work / "outside.png").write_bytes(query_image.read_bytes())
    return work, common


@contextmanager
def started_server(work: Path, common: list[str], *extra: str, log: list[str] | None = None
                   ) -> Iterator[tuple[str, subprocess.Popen]]:
    """serve.py with torch hidden, on a free port; yields its base URL and process, stops it afterwards, then appends
    what it printed to log."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", WITHOUT_TORCH, str(REPO / "serve.py"), *common,
                                "--SERVE_PORT=0", "--MAX_UPLOAD_MB=1", "--MAX_NUM_RESULTS=50", *extra],
                               cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()  # the first line, once the indices and sessions are open
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert found, line + process.stdout.read() if process.poll() is not None else line
        yield found.group(0), process
    finally:
        process.terminate()
        printed = process.communicate(timeout=20)[0]
        if log is not None:
            log.append(printed)


@contextmanager
def running_server(work: Path, common: list[str], *extra: str) -> Iterator[str]:
    """serve.py as started_server runs it; yields its base URL."""
    with started_server(work, common, *extra) as (base, _):
        yield base


@pytest.fixture(scope="module")
def server(built):
    with running_server(*built) as base:
        yield base


def load_clip_client() -> types.ModuleType:
    """clip-retrieval's clip_client module alone: its package's __init__ imports its server (flask, torch)."""
    package = importlib.util.find_spec("clip_retrieval")
    assert package, "clip-retrieval is not installed: pip install --no-deps -r requirements-dev-nodeps.txt"
    path = os.path.join(package.submodule_search_locations[0], "clip_client.py")
    spec = importlib.util.spec_from_file_location("clip_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def post(base: str, path: str, **body) -> requests.Response:
    return requests.post(base + path, json=body, timeout=30)


def image_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_health_and_indices(server):
    health = requests.get(f"{server}/health", timeout=10).json()
    assert health["status"] == "ok" and health["indices"] == {"images": len(PROMPTS), "prompts": len(PROMPTS)}
    assert "seed" in health["filters"]["images"] and "date" in health["filters"]["prompts"]
    assert requests.get(f"{server}/indices-list", timeout=10).json() == ["prompt-search"]


def test_text_finds_its_prompt_with_metadata_and_timings(server):
    answer = post(server, "/api/search", text=PROMPTS[3], index="prompts", num_results=3)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    top = body["results"][0]
    assert body["mode"] == "hybrid" and set(top["found_by"]) == {"clip", "keywords"}  # a text's default: both
    assert top["prompt"] == PROMPTS[3] and top["found_by"]["clip"] > 0.99 and top["seed"] == "3" and top["width"] == 512
    assert top["date"].startswith("2022-08-") and set(body["timings_ms"]) == {"encode", "search", "lookup"}
    timing = dict(part.strip().split(";dur=") for part in answer.headers["Server-Timing"].split(","))
    assert set(timing) == {"encode", "search", "lookup", "app"} and float(timing["app"]) >= float(timing["encode"])
    assert "script-src 'self'" in answer.headers["Content-Security-Policy"]


def test_image_finds_itself_and_more_like_this(server, built):
    work, _ = built
    own = sorted((work / "out" / "images").rglob("*.jpg"))[2]
    results = post(server, "/api/search", image=image_b64(own), num_results=2).json()["results"]
    assert results[0]["score"] > 0.99 and results[0]["thumbnail"] == f"/thumbnail/images/{results[0]['position']}"
    like = {"index": "images", "position": results[0]["position"]}
    again = post(server, "/api/search", like=like, num_results=2).json()["results"]
    assert again[0]["id"] == results[0]["id"]
    thumbnail = requests.get(server + results[0]["thumbnail"], timeout=10)
    assert thumbnail.status_code == 200 and Image.open(io.BytesIO(thumbnail.content)).format == "JPEG"


def test_filters_paging_and_negatives(server):
    everything = post(server, "/api/search", text="a picture", index="prompts", num_results=8, dedupe=False).json()
    seeds = [int(hit["seed"]) for hit in everything["results"]]  # decimal text
    assert sorted(seeds) == list(range(len(PROMPTS)))
    filtered = post(server, "/api/search", text="a picture", index="prompts", num_results=8,
                    filters={"seed": {"min": 2, "max": 4}, "width": {"min": 512}}).json()["results"]
    assert sorted(int(hit["seed"]) for hit in filtered) == [2, 3, 4]
    dated = post(server, "/api/search", text="a picture", index="prompts", num_results=8,
                 filters={"date": {"from": "2030-01-01"}}).json()["results"]
    assert dated == []
    page = post(server, "/api/search", text="a picture", index="prompts", num_results=3, offset=3, dedupe=False)
    assert [int(hit["seed"]) for hit in page.json()["results"]] == seeds[3:6]
    negative = post(server, "/api/search", text="a castle -people -big crowd", index="prompts").json()
    assert negative["negative"] == ["people", "big crowd"] and negative["results"]


def test_clip_retrieval_protocol_and_its_client(server, built):
    client_module = load_clip_client()
    ClipClient, Modality = client_module.ClipClient, client_module.Modality  # noqa: N806
    work, _ = built
    client = ClipClient(url=f"{server}/knn-service", indice_name="prompt-search", num_images=3,
                        modality=Modality.TEXT)
    by_text = client.query(text=PROMPTS[1])
    assert by_text[0]["caption"] == PROMPTS[1] and set(by_text[0]) == {"id", "similarity", "url", "caption"}
    own = sorted((work / "out" / "images").rglob("*.jpg"))[4]
    by_image = ClipClient(url=f"{server}/knn-service", indice_name="prompt-search", num_images=2).query(image=str(own))
    assert by_image[0]["similarity"] > 0.99 and by_image[0]["url"].endswith(".png")
    vector = [0.1] * 32
    assert len(client.query(embedding_input=vector)) == 3


@pytest.mark.parametrize(("body", "status", "message"), [
    ("not json", 400, "not JSON"),
    ([1, 2], 422, "bad request"),
    ({"text": 5}, 422, "text"),
    ({"text": "a", "index": "videos"}, 422, "index"),
    ({"text": "  "}, 400, "give a text"),
    ({"text": "a", "num_results": 0}, 422, "num_results"),
    ({"text": "a", "num_results": 51}, 422, "from 1 to 50"),
    ({"text": "a", "offset": 990, "num_results": 20}, 422, "at most 1000"),
    ({"text": "a", "image": "%%%"}, 400, "not base64"),
    ({"text": "a", "filters": {"colour": {"min": 1}}}, 422, "colour"),
    ({"text": "a", "filters": {"date": {"from": "yesterday"}}}, 422, "date"),
    ({"like": {"index": "images", "position": 10**9}}, 400, "no position"),
    ({"text": "a", "text_weight": 0}, 400, "cancel out"),
])
def test_bad_search_requests_get_a_4xx_and_a_message(server, body, status, message):
    data = body if isinstance(body, str) else None
    answer = requests.post(f"{server}/api/search", data=data, json=None if data else body, timeout=30)
    assert answer.status_code == status and message in answer.json()["error"], answer.text


def test_bad_images_and_long_texts(server, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)  # 400 million pixels in a few kilobytes
    truncated = make_image(tmp_path / "t.png", (300, 300)).read_bytes()[:600]
    for data, said in ((bomb.read_bytes(), "too large"), (truncated, "cannot be read"),
                       (b"not an image at all", "cannot be read")):
        answer = post(server, "/api/search", image=base64.b64encode(data).decode())
        assert answer.status_code == 400 and said in answer.json()["error"], answer.text
    big = post(server, "/api/search", image=base64.b64encode(os.urandom(2 << 20)).decode())
    assert big.status_code == 413 and "may be up to 1 MB" in big.json()["error"]
    long = post(server, "/api/search", text="a castle " * 2500, index="prompts").json()
    assert any("cut to its first" in note for note in long["notes"]) and long["results"]


@pytest.mark.parametrize(("body", "message"), [
    ({"text": "a", "indice_name": "laion5B"}, "unknown indice_name"),
    ({"text": "a", "use_mclip": True}, "use_mclip"),
    ({"image_url": "http://127.0.0.1:9/x.png"}, "fetches no URL"),
    ({"text": "a", "image": image_b64(REPO / "prompt_search" / "search" / "static" / "app.css")}, "exactly one"),
    ({"embedding_input": [1.0, 2.0]}, "dimensions"),
    ({"text": "a", "num_images": -1}, "from 1 to"),
    ({"text": "a", "modality": "audio"}, "modality"),
])
def test_bad_knn_requests(server, body, message):
    answer = post(server, "/knn-service", **body)
    assert 400 <= answer.status_code < 500 and message in answer.json()["error"], answer.text


@pytest.mark.parametrize("path", ["/thumbnail/images/..%2F..%2Foutside.png", "/thumbnail/images/-1",
                                  "/thumbnail/images/%2Fetc%2Fpasswd", "/thumbnail/images/../../outside.png",
                                  "/thumbnail/prompts/0", "/thumbnail/videos/0", "/thumbnail/images/99999999",
                                  "/static/../serve.py", "/static/%2e%2e/%2e%2e/serve.py"])
def test_thumbnails_only_from_the_images_folder(server, path):
    answer = requests.get(server + path, timeout=10)
    assert answer.status_code == 404 and b"import" not in answer.content


def test_slow_client_does_not_block_and_32_clients_get_no_error(server):
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as slow:  # sends half a request, then waits
        slow.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"text\":")
        queries = [{"text": f"a picture of {word}", "index": index, "num_results": 5}
                   for word in ("robots", "castles", "cars", "fruit") for index in ("images", "prompts")]
        deadline = time.monotonic() + 4  # a few seconds of load, bounded

        def client(number: int) -> tuple[int, int]:
            done = errors = 0
            with requests.Session() as session:
                while time.monotonic() < deadline:
                    answer = session.post(f"{server}/api/search", json=queries[number % len(queries)], timeout=30)
                    done += 1
                    errors += answer.status_code != 200 or not answer.json()["results"]
            return done, errors

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            outcomes = list(pool.map(client, range(32)))
    assert sum(errors for _, errors in outcomes) == 0 and all(done >= 1 for done, _ in outcomes)


def test_page_searches_as_you_type_and_by_dropped_image(server, browser, tmp_path):  # noqa: F811
    wait = WebDriverWait(browser, 30)
    browser.get(server + "/")
    assert browser.find_elements(By.CSS_SELECTOR, "script[src='/static/app.js']")
    browser.find_element(By.ID, "text").send_keys("a castle in the clouds")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card img"))
    wait.until(lambda d: d.execute_script(LOADED))  # the local thumbnails, served by /thumbnail/
    assert "/thumbnail/images/" in browser.find_element(By.CSS_SELECTOR, "#results .card img").get_attribute("src")

    browser.find_element(By.CSS_SELECTOR, "input[value=prompts]").click()
    browser.find_element(By.ID, "text").clear()
    browser.find_element(By.ID, "text").send_keys(SCRIPT_PROMPT)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#results .prompt").text == SCRIPT_PROMPT)  # as text
    assert not browser.find_elements(By.CSS_SELECTOR, "#results script")
    assert browser.execute_script("return window.__pwned") is None
    assert "seed 5" in browser.find_element(By.CSS_SELECTOR, "#results .details").text
    browser.find_element(By.CSS_SELECTOR, "#results .card .more").click()  # more like this: the prompt itself first
    wait.until(lambda d: d.find_element(By.ID, "text").get_attribute("value") == "")
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#results .prompt").text == SCRIPT_PROMPT)

    browser.find_element(By.CSS_SELECTOR, "input[value=images]").click()
    # the cards are replaced when the image results arrive: wait for those, not the prompt cards still shown
    rerendered = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    thumbnail = rerendered.until(lambda d: next((src for img in d.find_elements(By.CSS_SELECTOR, "#results .card img")
                                                 if "/thumbnail/images/" in (src := img.get_attribute("src") or "")),
                                                None))
    browser.find_element(By.ID, "text").clear()
    browser.set_script_timeout(20)
    browser.execute_async_script(DROP_IMAGE, thumbnail)
    wait.until(lambda d: d.find_element(By.ID, "query-image").is_displayed())
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .score")
               and float(d.find_element(By.CSS_SELECTOR, "#results .score").text) > 0.9)
    wait.until(lambda d: d.execute_script(LOADED))
    shot = tmp_path / "search-page.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def prompts_only(tmp_path_factory, tiny_clip) -> tuple[Path, list[str]]:
    """As after `make run` on data whose image links are dead: only the prompts index exists, and no ONNX export."""
    work = tmp_path_factory.mktemp("prompts-only")
    rows = [(prompt, f"http://127.0.0.1:9/{i}.png") for i, prompt in enumerate(PROMPTS)]  # never fetched
    write_open_prompts_csv(work / "prompts.csv", rows)
    common = ["--OUT_DIR=out", f"--MODEL={tiny_clip}", "--BATCH_SIZE=4"]
    index_prompts(work, "prompts.csv", *common)
    return work, common


def test_a_server_without_torch_or_an_export_says_where_to_make_one(prompts_only):
    work, common = prompts_only
    refused = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, str(REPO / "serve.py"), *common, "--SERVE_PORT=0"],
                             cwd=work, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                             timeout=300)
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert last.startswith("error: out/onnx holds no current ONNX export") and "needs torch" in last, last
    assert "run test_visual_knn_index.py once where requirements.txt is installed" in last


def test_page_opens_on_the_index_that_exists_and_shows_no_empty_image_preview(prompts_only, browser):  # noqa: F811
    """The page opens on the index that exists (not on "Images", which would answer the first query with an error),
    and no query-image preview or its "Remove image" button shows before an image is chosen: what is visible, not
    only what is in the DOM."""
    work, common = prompts_only
    make_image(work / "query.png", (256, 256))
    run_script("test_visual_knn_index.py", *common, "--INPUT_IMG_PATH=query.png", "--COMPARE_WITH_TORCH=False",
               cwd=work)  # exports the ONNX models
    with running_server(work, common) as base:
        browser.get(base + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "input[value=images]").get_attribute("disabled"))
        assert browser.find_element(By.CSS_SELECTOR, "input[value=prompts]").is_selected()
        assert not browser.find_element(By.ID, "query-image").is_displayed()
        assert not browser.find_element(By.ID, "clear-image").is_displayed()
        browser.find_element(By.ID, "text").send_keys(PROMPTS[2])
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .prompt"))
        assert browser.find_element(By.CSS_SELECTOR, "#results .prompt").text == PROMPTS[2]
        assert browser.find_element(By.ID, "status").get_attribute("class") != "error"


def test_server_with_an_open_clip_model(tmp_path, tiny_open_clip):
    """The prompt side of an OpenCLIP model (its own tokenizer's special tokens), served without torch."""
    rows = [(prompt, f"http://127.0.0.1:9/{i}.png") for i, prompt in enumerate(PROMPTS)]  # never fetched
    write_open_prompts_csv(tmp_path / "prompts.csv", rows)
    common = ["--OUT_DIR=out", f"--MODEL={tiny_open_clip}", "--BATCH_SIZE=4"]
    index_prompts(tmp_path, "prompts.csv", *common)
    make_image(tmp_path / "query.png", (256, 256))
    run_script("test_visual_knn_index.py", *common, "--INPUT_IMG_PATH=query.png", "--COMPARE_WITH_TORCH=False",
               cwd=tmp_path)  # exports the ONNX models, with the model's text and pixel specs
    with running_server(tmp_path, common) as base:
        answer = post(base, "/api/search", text=PROMPTS[4], index="prompts", num_results=2)
        assert answer.status_code == 200, answer.text
        top = answer.json()["results"][0]
        assert top["prompt"] == PROMPTS[4] and top["found_by"]["clip"] > 0.99


def test_connections_to_the_listening_socket_send_without_delay():
    """asyncio (uvicorn's loop) sets TCP_NODELAY on the connections it accepts from serve.py's socket: without it a
    kept-alive connection waited for the client's delayed ACK before each answer's last segment."""
    import asyncio
    import socket

    from prompt_search.search.server import listening_socket

    async def accepted_nodelay() -> int:
        found = asyncio.get_running_loop().create_future()

        def on_connection(reader, writer):
            found.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = listening_socket("127.0.0.1", 0)
        server = await asyncio.start_server(on_connection, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
            value = await asyncio.wait_for(found, 10)
            writer.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0


def test_thumbnails_at_a_file_url_follow_the_images_folders_links_as_a_local_folder(built, tmp_path):
    """IMG_DIR given as a file:// URL is still a local folder: an image there that links outside is refused."""
    work, common = built
    copy = tmp_path / "copy"
    shutil.copytree(work, copy, symlinks=True)
    paths = ItemTable(str(copy / "out" / "knn_indices" / "visual" / ITEMS_FILE)).column("path").to_pylist()
    linked = copy / paths[0]
    linked.unlink()
    linked.symlink_to(copy / "outside.png")
    with running_server(copy, [*common, f"--IMG_DIR=file://{copy}/out/images"]) as base:
        answers = [requests.get(f"{base}/thumbnail/images/{i}", timeout=10).status_code for i in range(len(paths))]
    assert answers == [404] + [200] * (len(paths) - 1)
