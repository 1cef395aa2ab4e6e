"""Files a folder or a download can hold that are no ordinary image (issue 25, items 2, 3, 5, 6): images over
PIL's pixel limit, names that are not UTF-8, folders the process cannot read, FIFOs and devices named .jpg, ids that
differ only by a NUL. Each is skipped (or indexed) and counted as the README says, never a crash or a hang."""

import csv
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.parse
import zlib
from pathlib import Path

import numpy as np
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
import requests
from conftest import REPO, make_image, readable_by_everyone, run_script, serve, write_open_prompts_csv
from PIL import Image
from test_server import running_server

from prompt_search.layout import METADATA_FILE
from prompt_search.pixels import MAX_PIXELS
from prompt_search.settings import DownloadSettings
from prompt_search.sources.download import download_images
from prompt_search.sources.image_files import path_as_text, path_from_text
from prompt_search.sources.open_prompts import extract_links

NOBODY = 65534  # the unprivileged user an unreadable folder is tested as when the tests run as root


def write_png_bomb(path: Path, width: int, height: int) -> Path:
    """A greyscale PNG of width x height black pixels, a few hundred KB on disk: written row by row, never whole."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    squeeze, row, data = zlib.compressobj(9), b"\0" * (width + 1), []  # each row: filter byte 0, then its pixels
    data += [squeeze.compress(row) for _ in range(height)]
    data.append(squeeze.flush())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(data)) + chunk(b"IEND", b""))
    return path


# Past PIL's own limit (Image.MAX_IMAGE_PIXELS, 89.5 Mpixel), where PIL warns, and past twice that, where it raises
BOMBS = {"warned.png": (10_000, 10_000), "raised.png": (14_000, 14_000)}


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> Path:
    """A folder of two good images and the two bombs."""
    folder = tmp_path_factory.mktemp("bombs") / "images"
    make_image(folder / "good.png", (64, 48), seed=1)
    make_image(folder / "also-good.jpg", (48, 64), seed=2)
    for name, size in BOMBS.items():
        write_png_bomb(folder / name, *size)
    return folder


def skipped_rows(out: Path) -> dict[str, str]:
    """skipped.csv of the visual set: source -> reason."""
    with open(out / "visual_embeddings" / "skipped.csv", encoding="utf-8", newline="") as f:
        return {row["source"]: row["reason"] for row in csv.DictReader(f)}


def rejects_rows(out: Path) -> list[dict]:
    with open(out / "metadata" / "rejects.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def embedded_ids(out: Path) -> list[str]:
    return sorted(np.concatenate([np.load(p) for p in (out / "visual_embeddings" / "ids").glob("*.npy")]))


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_images_over_the_pixel_limit_are_skipped_and_counted_by_step_3(bombs, tiny_clip, tmp_path, decode):
    run_script("extract_visual_clip_embeddings.py", f"--IMG_DIR={bombs}", "--OUT_DIR=out", f"--MODEL={tiny_clip}",
               "--NUM_WORKERS=0", "--BATCH_SIZE=2", "--DEVICE=cpu", f"--DECODE={decode}", cwd=tmp_path)
    assert embedded_ids(tmp_path / "out") == ["also-good.jpg", "good.png"]
    skipped = skipped_rows(tmp_path / "out")
    assert sorted(skipped) == sorted(str(bombs / name) for name in BOMBS)
    assert all("too large" in reason for reason in skipped.values())


def test_images_over_the_pixel_limit_get_a_reject_row_in_step_1(bombs, tmp_path):
    result = run_script("extract_metadata_from_images.py", f"--IMG_DIR={bombs}", "--OUT_DIR=out", cwd=tmp_path)
    assert "too_large: 2" in result.stdout
    rejects = {row["path"]: row for row in rejects_rows(tmp_path / "out")}
    assert sorted(rejects) == sorted(str(bombs / name) for name in BOMBS)
    assert {row["reason"] for row in rejects.values()} == {"too_large"}
    ids = pq.read_table(tmp_path / "out" / METADATA_FILE).column("id").to_pylist()
    assert sorted(ids) == sorted(["also-good.jpg", "good.png", *BOMBS])  # a row for each image step 3 lists


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_query_image_over_the_pixel_limit_is_refused_in_one_line(bombs, tmp_path, name):
    result = run_script("test_visual_knn_index.py", f"--INPUT_IMG_PATH={bombs / name}", "--OUT_DIR=out",
                        cwd=tmp_path, check=False)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: query image {bombs / name} cannot be read: too large (")


def test_download_refuses_an_image_over_the_pixel_limit_before_decoding_it(tmp_path):
    served = tmp_path / "served"
    make_image(served / "good.png", (64, 48))
    write_png_bomb(served / "bomb.png", *BOMBS["raised.png"])
    with serve(served) as base:
        write_open_prompts_csv(tmp_path / "p.csv", [("good", f"{base}/good.png"), ("bomb", f"{base}/bomb.png")])
        extract_links(str(tmp_path / "p.csv"), str(tmp_path / "out"))
        images = tmp_path / "out" / "images"
        summary = download_images(str(tmp_path / "out" / METADATA_FILE), str(images),
                                  DownloadSettings(64, "keep_ratio", 2, 1, 5, 0, "files"))
    assert (summary.count, summary.successes) == (2, 1)
    [reason] = summary.failures
    assert reason.startswith(f"over {MAX_PIXELS} pixels, refused before decoding (OpenCV(")
    kept = [json.loads(p.read_text()) for p in images.glob("*/*.json")]
    assert [s["caption"] for s in kept if s["status"] == "success"] == ["good"]


def test_the_text_of_a_path_leads_back_to_it():
    for path in ["plain/a.png", "caf\u00e9.png", "\udcff.png", "d/\udce9t\u00e9.png", '"quoted".png', '"',
                 'back\\slash "\udc80".png', "\u2603/\ud800"]:
        text = path_as_text(path)
        text.encode("utf-8")  # valid UTF-8: Parquet and Arrow store it
        assert path_from_text(text) == path
    assert path_as_text("plain/caf\u00e9.png") == "plain/caf\u00e9.png"  # the ids of every other name unchanged
    assert path_as_text("\udcff.png") == '"\\udcff.png"'


def test_a_file_name_that_is_not_utf8_is_indexed_and_its_id_leads_back_to_it(tmp_path, tiny_clip):
    images = tmp_path / "images"
    make_image(images / "plain.png", (64, 48), seed=1)
    odd = os.fsencode(str(images)) + b"/caf\xe9 \xff.png"  # Latin-1 and a stray byte: no UTF-8
    make_image(Path(os.fsdecode(odd)), (48, 64), seed=2)
    common = ["--IMG_DIR=images", "--OUT_DIR=out", f"--MODEL={tiny_clip}", "--NUM_WORKERS=0", "--BATCH_SIZE=2"]
    for script in ("extract_metadata_from_images.py", "extract_visual_clip_embeddings.py",
                   "create_visual_knn_indices.py"):
        run_script(script, *common, cwd=tmp_path)
    out = tmp_path / "out"
    metadata_ids = pq.read_table(out / METADATA_FILE).column("id").to_pylist()
    assert len(metadata_ids) == 2 and "plain.png" in metadata_ids
    odd_id = next(i for i in metadata_ids if i != "plain.png")
    assert os.fsencode(os.path.join("images", path_from_text(odd_id))) == b"images/caf\xe9 \xff.png"
    assert embedded_ids(out) == sorted(metadata_ids)
    items = ipc.open_file(out / "knn_indices" / "visual" / "items.arrow").read_all().to_pylist()
    paths = {row["id"]: row["path"] for row in items}
    assert sorted(paths) == sorted(metadata_ids)
    assert os.fsencode(path_from_text(paths[odd_id])) == b"images/caf\xe9 \xff.png"
    assert Image.open(tmp_path / path_from_text(paths[odd_id])).size == (48, 64)
    # Step 5's page (a text and an image query, each showing both) and the server's thumbnail find the file
    query = ["--INPUT_IMG_PATH=images/plain.png", "--INPUT_PROMPT=a cat", "--NUM_RESULTS=2", "--DEDUPE_THRESHOLD=1",
             "--COMPARE_WITH_TORCH=False"]
    run_script("test_visual_knn_index.py", *common, *query, cwd=tmp_path)
    sources = re.findall(r'<img src="([^"]+)"', (out / "results.html").read_text())
    assert sorted({urllib.parse.unquote_to_bytes(src) for src in sources}) == [b"../images/caf\xe9 \xff.png",
                                                                            b"../images/plain.png"]
    position = next(i for i, row in enumerate(items) if row["id"] == odd_id)
    with running_server(tmp_path, common) as base:
        thumbnail = requests.get(f"{base}/thumbnail/images/{position}", timeout=60)
    assert thumbnail.status_code == 200 and Image.open(io.BytesIO(thumbnail.content)).size == (48, 64)


def run_as_unprivileged(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A script run by a user who cannot read a chmod-000 folder: root can, so as root it runs as nobody."""
    command = [sys.executable, str(readable_by_everyone(REPO) / script), *args]
    if os.geteuid() == 0:
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(cwd), "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def shared_dir(tiny_clip):
    """A folder nobody may write into (pytest's own are root's alone), with the tiny CLIP in it."""
    folder = Path(tempfile.mkdtemp(prefix="file-faults-"))
    folder.chmod(0o777)
    shutil.copy(tiny_clip, folder / "tiny-clip.pt")
    (folder / "tiny-clip.pt").chmod(0o644)
    yield folder
    for locked in folder.rglob("*"):
        if locked.is_dir() and not locked.is_symlink():
            locked.chmod(0o755)
    shutil.rmtree(folder)


def test_a_folder_that_cannot_be_read_is_named_and_counted(shared_dir):
    images = shared_dir / "images"
    make_image(images / "a.png", (64, 48), seed=1)
    make_image(images / "locked" / "b.png", (64, 48), seed=2)
    make_image(images / "z" / "c.png", (64, 48), seed=3)
    for folder in (images, images / "z"):
        folder.chmod(0o755)
    (images / "locked").chmod(0o000)
    common = ["--IMG_DIR=images", "--OUT_DIR=out", "--MODEL=tiny-clip.pt", "--NUM_WORKERS=0", "--DEVICE=cpu"]
    locked = "images/locked"
    line = f"1 folder could not be read, so its images are missing; first: {locked}: folder cannot be read: Permission"

    metadata = run_as_unprivileged("extract_metadata_from_images.py", *common, cwd=shared_dir)
    assert metadata.returncode == 0, metadata.stderr
    assert line in metadata.stdout
    assert [(row["path"], row["reason"]) for row in rejects_rows(shared_dir / "out")] == [
        (locked, "unreadable_folder")]

    visual = run_as_unprivileged("extract_visual_clip_embeddings.py", *common, cwd=shared_dir)
    assert visual.returncode == 0, visual.stderr
    assert line in visual.stdout
    assert embedded_ids(shared_dir / "out") == ["a.png", "z/c.png"]
    assert list(skipped_rows(shared_dir / "out")) == [locked]


def test_fifos_and_devices_named_as_images_are_never_opened(tmp_path, tiny_clip):
    images = tmp_path / "images"
    make_image(images / "a.png", (64, 48), seed=1)
    os.mkfifo(images / "fifo.jpg")  # opening it waits for a writer forever
    (images / "zero.jpg").symlink_to("/dev/zero")  # reading it never ends
    (images / "gone.png").symlink_to(images / "missing.png")
    (images / "link.png").symlink_to(images / "a.png")  # a link to a regular file is an image like any other
    common = ["--IMG_DIR=images", "--OUT_DIR=out", f"--MODEL={tiny_clip}", "--NUM_WORKERS=0"]
    metadata = run_script("extract_metadata_from_images.py", *common, cwd=tmp_path)
    assert "not_a_file: 3" in metadata.stdout
    refused = {row["path"]: row["reason"] for row in rejects_rows(tmp_path / "out")}
    assert refused == dict.fromkeys(["images/fifo.jpg", "images/gone.png", "images/zero.jpg"], "not_a_file")
    for decode in ("cpu", "gpu"):
        run_script("extract_visual_clip_embeddings.py", *common, "--DEVICE=cpu", f"--DECODE={decode}",
                   f"--OUT_DIR=out-{decode}", cwd=tmp_path)
        assert embedded_ids(tmp_path / f"out-{decode}") == ["a.png", "link.png"]
        skipped = skipped_rows(tmp_path / f"out-{decode}")
        assert sorted(skipped) == ["images/fifo.jpg", "images/gone.png", "images/zero.jpg"]
        assert "a FIFO" in skipped["images/fifo.jpg"] and "a character device" in skipped["images/zero.jpg"]
    result = run_script("test_visual_knn_index.py", "--INPUT_IMG_PATH=images/fifo.jpg", "--OUT_DIR=out",
                        cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: query image images/fifo.jpg is not a regular file (a FIFO): "
                                          "set --INPUT_IMG_PATH to an image file"]


def test_ids_that_differ_only_by_a_nul_stay_apart(tmp_path, tiny_clip):
    images = tmp_path / "images" / "00000"
    for seed, (name, sidecar_id) in enumerate([("a", "nul\u0000"), ("b", "nul"), ("c", "odd\udcff")]):
        make_image(images / f"{name}.jpg", (64, 48), seed=seed)
        (images / f"{name}.json").write_text(json.dumps({"id": sidecar_id}))
    common = ["--IMG_DIR=images", "--OUT_DIR=out", f"--MODEL={tiny_clip}", "--NUM_WORKERS=0"]
    run_script("extract_metadata_from_images.py", *common, cwd=tmp_path)
    visual = run_script("extract_visual_clip_embeddings.py", *common, cwd=tmp_path)
    expected = ["00000/a.jpg", "00000/c.jpg", "nul"]
    assert sorted(pq.read_table(tmp_path / "out" / METADATA_FILE).column("id").to_pylist()) == expected
    assert embedded_ids(tmp_path / "out") == expected
    assert "2 sidecars give no usable id" in visual.stdout and "a.json: id holds a NUL character" in visual.stdout


def test_a_sidecar_of_deeply_nested_json_is_a_counted_problem_and_the_steps_go_on(tmp_path, tiny_clip):
    """json.loads of a deep sidecar raises RecursionError: its image falls back to its path id, like any sidecar
    that is not a JSON object, instead of stopping step 1 and step 3."""
    images = tmp_path / "images" / "00000"
    make_image(images / "deep.jpg", (64, 48), seed=1)
    (images / "deep.json").write_text('{"id": ' + "[" * 100_000 + "]" * 100_000 + "}")
    make_image(images / "fine.jpg", (64, 48), seed=2)
    common = ["--IMG_DIR=images", "--OUT_DIR=out", f"--MODEL={tiny_clip}", "--NUM_WORKERS=0"]
    run_script("extract_metadata_from_images.py", *common, cwd=tmp_path)
    visual = run_script("extract_visual_clip_embeddings.py", *common, cwd=tmp_path)
    expected = ["00000/deep.jpg", "00000/fine.jpg"]
    assert sorted(pq.read_table(tmp_path / "out" / METADATA_FILE).column("id").to_pylist()) == expected
    assert embedded_ids(tmp_path / "out") == expected
    assert "deep.json: not a JSON object (RecursionError)" in visual.stdout
