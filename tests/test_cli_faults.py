"""Faults a user meets at the command line: a killed step leaves no process behind, and a bad setting, model or
output folder is answered in one line, not a traceback (issue 25, items 8 and 9)."""

import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import (
    children_of,
    is_running,
    make_image,
    readable_by_everyone,
    run_script,
    serve,
    write_open_prompts_csv,
)

from config_reader import load_config
from prompt_search.embedding.textual import embed_prompts
from prompt_search.errors import UserError
from prompt_search.index.build import create_index
from prompt_search.layout import METADATA_FILE
from prompt_search.models.clip import load
from prompt_search.models.openai_clip import choose_device
from prompt_search.settings import EmbedSettings, IndexSettings
from prompt_search.sources.open_prompts import extract_links

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


# --- one line, not a traceback -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_clip):
    """Step 1, 3' and 4's outputs on 6 prompts, and a folder of 3 images: what the steps below start from."""
    root = tmp_path_factory.mktemp("built")
    write_open_prompts_csv(root / "p.csv", [(f"prompt {i}", f"https://example.com/{i}.png") for i in range(6)])
    out = root / "outputs"
    extract_links(str(root / "p.csv"), str(out))
    embed_prompts(str(out / METADATA_FILE), str(out / "textual_embeddings"), EmbedSettings(tiny_clip, "", "cpu", 4))
    create_index(str(out), "textual", IndexSettings("4G", "8G", 10.0))  # config.py's memory settings
    for i in range(3):
        make_image(root / "images" / f"{i}.png", (40, 30), seed=i)
    return SimpleNamespace(root=root, out=out, model=tiny_clip)


def copy_outputs(built, to: Path, *names: str) -> Path:
    """A new OUT_DIR holding the named outputs of built (each a set: its link and its folder)."""
    to.mkdir()
    for entry in built.out.iterdir():
        if entry.name.lstrip(".").partition(".")[0] not in names:
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), to / entry.name)
        else:
            shutil.copytree(entry, to / entry.name, symlinks=True)
    return to


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
            for p in folder.rglob("*")}


def run_read_only(out_dir: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """Run script with out_dir mounted read-only (root writes any folder whatever its mode bits), in a mount
    namespace of its own: nothing stays mounted whatever happens to the test."""
    mount = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(out_dir),
                           sys.executable, str(REPO / script), f"--OUT_DIR={out_dir}", *args], cwd=out_dir.parent,
                          env=env, capture_output=True, text=True, timeout=600)


def assert_one_line(result: subprocess.CompletedProcess, *said: str) -> None:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(part in line for part in said), result.stderr


# Each step on a read-only OUT_DIR holding what it reads: one line naming where it could not write, and the folder
# as it was.
STEPS = {
    "1": ("extract_img_links_from_csv.py", [], lambda b: ["--CSV_FILE=" + str(b.root / "p.csv")]),
    "3": ("extract_visual_clip_embeddings.py", [], lambda b: ["--IMG_DIR=" + str(b.root / "images"),
                                                              "--NUM_WORKERS=0", f"--MODEL={b.model}"]),
    "3'": ("extract_textual_clip_embeddings.py", ["metadata"], lambda b: [f"--MODEL={b.model}"]),
    "4": ("create_textual_knn_indices.py", ["metadata", "textual_embeddings"], lambda b: []),
    "5": ("test_visual_knn_index.py", ["metadata", "textual_embeddings", "knn_indices"],
          lambda b: [f"--MODEL={b.model}", "--INPUT_IMG_PATH=" + str(b.root / "images" / "0.png"),
                     "--COMPARE_WITH_TORCH=False"]),
}


@pytest.mark.parametrize("step", STEPS)
def test_read_only_out_dir_is_one_line_and_left_as_it_was(built, tmp_path, step):
    script, inputs, args = STEPS[step]
    out = copy_outputs(built, tmp_path / "outputs", *inputs)
    before = tree(out)
    result = run_read_only(out, script, "--DEVICE=cpu", *args(built))
    assert_one_line(result, str(out), "Read-only file system")
    assert tree(out) == before


def test_out_dir_of_another_user_is_one_line(built, tmp_path):
    """As an unprivileged user (nobody), whom a root-owned folder refuses: EACCES rather than EROFS."""
    shared = Path(tempfile_folder(tmp_path))
    shutil.copy(built.root / "p.csv", shared / "p.csv")
    (shared / "outputs").mkdir(mode=0o755)
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1", "HOME": str(shared)}
    script = readable_by_everyone(REPO) / STEPS["1"][0]
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                             str(script), "--CSV_FILE=p.csv", "--OUT_DIR=outputs"], cwd=shared, env=env,
                            capture_output=True, text=True, timeout=300)
    assert_one_line(result, "outputs/.metadata-claim", "Permission denied")  # the claim: the first thing it writes
    assert list((shared / "outputs").iterdir()) == []


def tempfile_folder(tmp_path: Path) -> str:
    """A folder every user may read (pytest's own is root's alone), removed with tmp_path's."""
    folder = tmp_path / "shared"
    folder.mkdir()
    return str(readable_by_everyone(folder))


def test_out_dir_naming_a_file_is_one_line(tmp_path):
    (tmp_path / "outputs").write_text("not a folder")
    result = run_script("create_textual_knn_indices.py", cwd=tmp_path, check=False)
    assert_one_line(result, "OUT_DIR=outputs is a file, not a folder")
    with pytest.raises(UserError, match=f"OUT_DIR={tmp_path}/outputs is a file"):
        load_config([f"--OUT_DIR={tmp_path}/outputs"])  # every step's settings


def test_out_dir_below_a_file_is_one_line_naming_the_path(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    write_open_prompts_csv(tmp_path / "p.csv", [("a prompt", "https://example.com/a.png")])
    result = run_script("extract_img_links_from_csv.py", "--CSV_FILE=p.csv", "--OUT_DIR=file/outputs", cwd=tmp_path,
                        check=False)
    assert_one_line(result, "file/outputs", "Not a directory", "a part of this path is a file")


def test_a_file_that_is_not_a_checkpoint_is_refused_in_one_line(tmp_path):
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    with pytest.raises(UserError, match=f"--MODEL={text} is not a CLIP checkpoint: neither a torch.save file"):
        load(str(text), "cpu", str(tmp_path))
    result = run_script("extract_textual_clip_embeddings.py", f"--MODEL={text}", "--DEVICE=cpu", "--OUT_DIR=outputs",
                        cwd=tmp_path, check=False)
    assert "Traceback" not in result.stderr  # no prompts: it stops before the model, in one line too


@pytest.mark.parametrize("setting", ["MAX_UPLOAD_MB", "DEDUPE_THRESHOLD", "MAX_INDEX_QUERY_TIME_MS"])
@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e999", "Infinity"])
def test_non_finite_numbers_are_refused_in_any_float_setting(setting, text):
    with pytest.raises(UserError, match=f"--{setting}={text}: {setting} must be a finite number, "):
        load_config([f"--{setting}={text}"])


def test_non_finite_number_in_config_py_is_refused():
    import config

    defaults = SimpleNamespace(**{name: value for name, value in vars(config).items() if name.isupper()})
    defaults.MAX_UPLOAD_MB, defaults.__name__ = float("inf"), "config"
    with pytest.raises(UserError, match="config.py: MAX_UPLOAD_MB = inf: MAX_UPLOAD_MB must be more than 0"):
        load_config([], defaults)


def test_serve_with_infinite_upload_limit_is_one_line(tmp_path):
    assert_one_line(run_script("serve.py", "--MAX_UPLOAD_MB=inf", cwd=tmp_path, check=False),
                    "--MAX_UPLOAD_MB=inf: MAX_UPLOAD_MB must be a finite number, more than 0")


# A CUDA device this machine lacks: any on a machine without CUDA, else the one past its last.
MISSING_GPU = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


@pytest.mark.parametrize(("device", "said"), [(MISSING_GPU, "--DEVICE=" + MISSING_GPU),
                                              ("gpu", "--DEVICE=gpu is not a device torch knows")])
def test_a_device_torch_cannot_use_is_said_as_such(built, tmp_path, device, said):
    with pytest.raises(UserError, match=said):
        choose_device(device)
    out = copy_outputs(built, tmp_path / "outputs", "metadata")
    result = run_script("extract_textual_clip_embeddings.py", f"--MODEL={built.model}", f"--DEVICE={device}",
                        f"--OUT_DIR={out}", cwd=tmp_path, check=False)
    assert_one_line(result, said)
    assert "checkpoint" not in result.stderr


# --- a full disk --------------------------------------------------------------------------------------------------


def test_a_full_disk_is_one_line_and_the_published_set_stays(tmp_path):
    """Step 1 on a real file system that fills up (a 256 KiB tmpfs, in a mount namespace of its own): the run that
    meets the full disk ends in one line naming the cause, and the set published before it is still whole."""
    write_open_prompts_csv(tmp_path / "small.csv", [(f"prompt {i}", f"https://example.com/{i}.png") for i in range(6)])
    noise = [os.urandom(300).hex() for _ in range(3000)]  # incompressible prompts: about 2 MB of metadata
    write_open_prompts_csv(tmp_path / "big.csv", [(text, f"https://example.com/b{i}.png") for i, text in
                                                  enumerate(noise)])
    script = ('mount -t tmpfs -o size=256k tmpfs "$0" && "$1" "$2" --CSV_FILE=small.csv --OUT_DIR="$0" >/dev/null '
              '&& "$1" "$2" --CSV_FILE=big.csv --OUT_DIR="$0"; status=$?; cp -a "$0" kept; exit $status')
    (tmp_path / "outputs").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                             str(tmp_path / "outputs"), sys.executable, str(REPO / "extract_img_links_from_csv.py")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert_one_line(result, "No space left on device")
    assert "wrote" not in result.stdout
    expected = tmp_path / "expected"
    extract_links(str(tmp_path / "small.csv"), str(expected))
    kept = tmp_path / "kept"
    for name in ("img_links.txt", "metadata.parquet", "rejects.csv"):
        assert (kept / "metadata" / name).read_bytes() == (expected / "metadata" / name).read_bytes()
