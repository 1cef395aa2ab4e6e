"""Faults a user meets at the command line: a killed step leaves no process behind, and a bad setting, model or
output folder is answered in one line, not a traceback (issue 25, items 8 and 9)."""

import http.server
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import children_of, is_running, serve, write_open_prompts_csv

from prompt_search.links import extract_links

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def stalled_server():
    """An http server on 127.0.0.1 whose answers wait until the test ends; yields (base URL, set when asked)."""
    asked, release = threading.Event(), threading.Event()

    class Stalled(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.set()
            release.wait()
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalled)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        release.set()
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="finds the processes through /proc (Linux)")
def test_killed_download_step_leaves_no_img2dataset_process(tmp_path):
    with stalled_server() as (base, asked):
        write_open_prompts_csv(tmp_path / "p.csv", [(f"p {i}", f"{base}/{i}.png") for i in range(4)])
        extract_links(str(tmp_path / "p.csv"), str(tmp_path / "outputs"))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("NO_ALBUMENTATIONS_UPDATE", None)  # the step sets it itself
        script = subprocess.Popen([sys.executable, str(REPO / "download_images.py"), "--DOWNLOAD_TIMEOUT=600"],
                                  cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not asked.wait(0.05):  # a download worker is waiting for its image
                assert script.poll() is None, "the step ended before downloading"
            children = {pid for pid in children_of(script.pid) if is_running(pid)}
            assert len(children) >= 2  # img2dataset's download process and its logger process at least
        finally:
            script.kill()
            script.wait()
        deadline = time.monotonic() + 10  # the image would still be awaited for 600 s
        while any(map(is_running, children)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in children if is_running(pid)], "img2dataset's processes outlived the step"


# Loaded by every Python process of the step (sitecustomize on PYTHONPATH): records each URL urllib is asked for.
RECORD_URLS = """
import os, sys

def record(event, args):
    if event == "urllib.Request":
        with open(os.environ["URLS_ASKED"], "a") as f:
            f.write(args[0] + "\\n")

sys.addaudithook(record)
"""


def test_download_step_asks_pypi_nothing_without_no_albumentations_update_set(tmp_path):
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(RECORD_URLS)
    with serve(tmp_path / "served") as base:
        write_open_prompts_csv(tmp_path / "p.csv", [("a prompt", f"{base}/missing.png")])
        extract_links(str(tmp_path / "p.csv"), str(tmp_path / "outputs"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), str(REPO)]),
               "URLS_ASKED": str(tmp_path / "urls.txt")}
        env.pop("NO_ALBUMENTATIONS_UPDATE", None)  # what the step must not need
        subprocess.run([sys.executable, str(REPO / "download_images.py")], cwd=tmp_path, env=env, check=True,
                       capture_output=True, timeout=600)
    assert (tmp_path / "urls.txt").read_text().splitlines() == [f"{base}/missing.png"]  # the image only
