"""Shared test fixtures: the real 1k.csv when $PROMPT_SEARCH_DATA has it, a tiny CLIP, generated images, a
loopback image server."""

import http.server
import json
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """A CLIP of the real architecture with random weights, small, saved for clip.load(path)."""
    from scaffolding import save_random_clip

    path = tmp_path_factory.mktemp("model") / "tiny-clip.pt"
    save_random_clip(str(path))
    return str(path)


# A tiny OpenCLIP architecture: 256-pixel images (as ViT-B-32-256), OpenCLIP's GELU text transformer; an even
# number of image attention heads (width 128 / 64), as full-size models have, so torch's fused attention is used.
TINY_OPEN_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 256, "layers": 2, "width": 128, "patch_size": 32},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def write_open_clip(folder: Path, name: str, config: dict) -> str:
    """A model config file and a checkpoint of it with random weights; the --MODEL value naming them."""
    from scaffolding import save_random_open_clip

    arch = folder / f"{name}.json"
    arch.write_text(json.dumps(config))
    checkpoint = folder / f"{name}.pt"
    save_random_open_clip(str(checkpoint), str(arch))
    return f"open_clip:{arch}/{checkpoint}"


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory) -> str:
    """--MODEL=open_clip:CONFIG.json/CHECKPOINT.pt of a tiny OpenCLIP model with random weights."""
    return write_open_clip(tmp_path_factory.mktemp("open_clip"), "tiny-open-clip", TINY_OPEN_CLIP)


def readable_by_everyone(path: Path) -> Path:
    """path, with every folder from it up to / readable and searchable by other users where it was not (pytest's
    folders, and a clone in a folder mktemp made, are root's alone): for steps run as an unprivileged user."""
    for folder in (path, *path.parents):
        if not folder.stat().st_mode & 0o005:
            folder.chmod(folder.stat().st_mode | 0o005)
    return path


def killed_after_batches(monkeypatch, count: int) -> tuple[list, object]:
    """Make step 3's batch writer (embed.save_batch) raise KeyboardInterrupt, as a kill would, once count batches
    are saved; returns the list of the batches it saved and the writer as it was, to put back for the run that
    resumes."""
    from prompt_search.embedding import set_writer as embed

    saved, original = [], embed.save_batch

    def killed(*args, **kwargs):
        if len(saved) == count:
            raise KeyboardInterrupt
        saved.append(args[1])
        original(*args, **kwargs)

    monkeypatch.setattr(embed, "save_batch", killed)
    return saved, original


def run_script(script: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a top-level script as a user would, from cwd, with --NAME=value overrides."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def make_image(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Path:
    """A picture of stripes and noise, different for each seed, saved in the given mode."""
    rng = np.random.default_rng(seed)
    width, height = size
    base = rng.integers(0, 256, (3,), dtype=np.uint8)
    pixels = np.broadcast_to(base, (height, width, 3)).copy()
    pixels[:: 1 + seed % 7] = rng.integers(0, 256, (3,), dtype=np.uint8)
    pixels = (pixels.astype(int) + rng.integers(-30, 30, pixels.shape)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    elif mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/forbidden/"):  # how Discord answers unsigned attachment links
            self.send_error(403)
        else:
            super().do_GET()


@contextmanager
def serve(folder: Path):
    """Serve folder over http on 127.0.0.1 (paths under /forbidden/ answer 403); yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def index_prompts(work: Path, csv_file: str, *common: str) -> None:
    """Steps 1, 3' and 4' as a user runs them from work: the prompts index of csv_file, with the settings common."""
    run_script("extract_img_links_from_csv.py", f"--CSV_FILE={csv_file}", *common, cwd=work)
    run_script("extract_textual_clip_embeddings.py", *common, cwd=work)
    run_script("create_textual_knn_indices.py", *common, cwd=work)


def index_folder(work: Path, *common: str) -> None:
    """Steps 1, 3, 4, 3' and 4' as `make own` runs them from work, over the folder common's --IMG_DIR names."""
    for script in ("extract_metadata_from_images.py", "extract_visual_clip_embeddings.py",
                   "create_visual_knn_indices.py", "extract_textual_clip_embeddings.py",
                   "create_textual_knn_indices.py"):
        run_script(script, *common, cwd=work)


def write_open_prompts_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """An open-prompts CSV (prompt, raw_data) whose rows point at the given (prompt, url)s, as Discord rows do."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "raw_data"])
        for i, (prompt, url) in enumerate(rows):
            raw = {"image_uri": "PENDING", "modifiers": prompt.split()[:3], "thumbnail_uri": "PENDING",
                   "raw_discord_data": {"seed": i, "width": 512, "height": 512, "num_step": 50, "cfg_scale": 7.0,
                                        "image_uri": url, "timestamp": 1660000000 + i, "is_grid": 0}}
            writer.writerow([prompt, json.dumps(raw)])
    return path


@pytest.fixture(scope="session")
def csv_1k(tmp_path_factory) -> Path:
    """The real 1k.csv (open-prompts' 998-row sample) from $PROMPT_SEARCH_DATA, its sha256 checked; the test is
    skipped, saying so, when it is not there (.ci/run sets the variable where CI keeps the data)."""
    from scaffolding import MissingDataFile, data_file_from_env

    import config

    try:
        return Path(data_file_from_env("1k.csv", config.CSV_SHA256, str(tmp_path_factory.mktemp("data"))))
    except MissingDataFile as missing:
        pytest.skip(str(missing))


def children_of(pid: int) -> set[int]:
    """The processes whose parent is pid, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
        except (FileNotFoundError, NotADirectoryError, ProcessLookupError, PermissionError):
            continue
        if f"\nPPid:\t{pid}\n" in status:
            found.add(int(entry.name))
    return found


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a reparented zombie waits for whoever reaps it, using no memory)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
