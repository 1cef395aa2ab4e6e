"""A step's outputs are replaced as one set: killed at any swap point, a reader sees the old set or the new one.

Each step is run with PROMPT_SEARCH_KILL_AT_SWAP=N for N = 1, 2, ... until a run gets through all its
swap points; after every kill the published set must be the old one or the new one, whole, and a
plain rerun must end with the new one.
"""

import io
import os
import shutil
from pathlib import Path

import numpy as np
from conftest import make_image, run_script, write_open_prompts_csv
from test_index import fake_embeddings

from prompt_search.output_sets import current_set, new_set, publish_set


def set_contents(path: Path) -> dict[str, bytes] | None:
    """Every file of the set published at path, by name below its folder; None when none is published."""
    folder = current_set(str(path))
    if folder is None:
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def kill_at_every_swap(tmp_path, monkeypatch, script, args, out_set, prepare_old, prepare_new, same=None):
    """Run script against an old complete set, killed at each swap point in turn; check what a reader sees."""
    same = same or (lambda a, b: a == b)
    reference = tmp_path / "reference"
    prepare_new(reference)
    run_script(script, *args, "--OUT_DIR=reference", cwd=tmp_path)
    new = set_contents(reference / out_set)
    old_out = tmp_path / "old"
    prepare_old(old_out)
    old = set_contents(old_out / out_set)
    assert old is not None and new is not None and not same(old, new)
    for swap in range(1, 100):
        work = tmp_path / f"killed-{swap}"
        shutil.copytree(old_out, work, symlinks=True)
        prepare_new(work)
        monkeypatch.setenv("PROMPT_SEARCH_KILL_AT_SWAP", str(swap))
        killed = run_script(script, *args, f"--OUT_DIR={work.name}", cwd=tmp_path, check=False)
        monkeypatch.delenv("PROMPT_SEARCH_KILL_AT_SWAP")
        seen = set_contents(work / out_set)
        if killed.returncode == 0:  # got past every swap point: it published the new set
            assert same(seen, new)
            return swap - 1
        assert killed.returncode == -9, killed.stderr
        assert same(seen, old) or same(seen, new), f"killed at swap {swap}: a mix of the old and the new set"
        run_script(script, *args, f"--OUT_DIR={work.name}", cwd=tmp_path)
        assert same(set_contents(work / out_set), new), f"rerun after a kill at swap {swap}"
    raise AssertionError("no run got through")


def test_step_1_killed_at_every_swap(tmp_path, monkeypatch):
    for rows in (3, 5):
        (tmp_path / f"csv{rows}").mkdir()
        write_open_prompts_csv(tmp_path / f"csv{rows}" / "in.csv",
                               [(f"prompt {i}", f"http://127.0.0.1:9/{i}.png") for i in range(rows)])

    def old_set(out: Path) -> None:
        run_script("extract_img_links_from_csv.py", "--CSV_FILE=csv3/in.csv", f"--OUT_DIR={out.name}", cwd=tmp_path)

    swaps = kill_at_every_swap(tmp_path, monkeypatch, "extract_img_links_from_csv.py", ["--CSV_FILE=csv5/in.csv"],
                               "metadata", old_set, lambda out: None)
    assert swaps >= 2


def test_step_3_killed_at_every_swap(tmp_path, monkeypatch, tiny_clip):
    for seed in range(4):
        make_image(tmp_path / "images" / f"{seed}.png", (64, 64), "RGB", seed)
    common = ["--IMG_DIR=images", f"--MODEL={tiny_clip}", "--BATCH_SIZE=2", "--NUM_WORKERS=0"]

    def old_set(out: Path) -> None:
        run_script("extract_visual_clip_embeddings.py", *common, "--BATCH_SIZE=3", f"--OUT_DIR={out.name}",
                   cwd=tmp_path)

    def same(a, b):  # the new set reuses the old set's vectors (batches of 3): equal up to float noise
        if a is None or b is None or a.keys() != b.keys():
            return False
        vectors = [name for name in a if name.startswith("embeddings/")]
        return all(a[name] == b[name] for name in a.keys() - vectors) and all(
            np.allclose(np.load(io.BytesIO(a[name])), np.load(io.BytesIO(b[name])), rtol=0, atol=1e-6)
            for name in vectors)

    swaps = kill_at_every_swap(tmp_path, monkeypatch, "extract_visual_clip_embeddings.py", common,
                               "visual_embeddings", old_set, lambda out: None, same)
    assert swaps >= 2 * 4 + 2  # two batches of four files each (one between batches), the manifest, the publishing


def test_step_4_killed_at_every_swap(tmp_path, monkeypatch):
    def embeddings(sizes, seed):
        def prepare(out: Path) -> None:
            folder = out / "visual_embeddings"
            if folder.exists():
                shutil.rmtree(folder)
            fake_embeddings(folder, sizes, seed=seed)
        return prepare

    def old_set(out: Path) -> None:
        embeddings([6], 1)(out)
        run_script("create_visual_knn_indices.py", f"--OUT_DIR={out.name}", cwd=tmp_path)

    def same(a, b):  # autofaiss's infos hold timings: compare what a reader reads
        return a is not None and b is not None and all(a[name] == b[name] for name in ("items.arrow", "vectors.npy"))

    swaps = kill_at_every_swap(tmp_path, monkeypatch, "create_visual_knn_indices.py", [], "knn_indices/visual",
                               old_set, embeddings([4, 3], 2), same)
    assert swaps >= 2


def test_a_reader_keeps_the_set_it_resolved(tmp_path):
    """A reader that resolved the link just before a publish still reads its whole set; older ones are removed."""
    path = str(tmp_path / "set")
    for generation in range(1, 4):
        folder = new_set(path)
        Path(folder, "value").write_text(str(generation))
        resolved_before = current_set(path)
        publish_set(path, folder)
        if resolved_before:
            assert Path(resolved_before, "value").read_text() == str(generation - 1)
    assert sorted(os.listdir(tmp_path)) == [".set.2", ".set.3", "set"]
    assert Path(current_set(path), "value").read_text() == "3"


def test_a_dangling_link_keeps_its_folders_number(tmp_path):
    """The published folder was removed by hand: the next set takes the next number, and the older set stays."""
    path = str(tmp_path / "set")
    for _ in range(2):
        publish_set(path, new_set(path))
    shutil.rmtree(tmp_path / ".set.2")
    assert current_set(path) is None
    assert new_set(path) == str(tmp_path / ".set.3") and (tmp_path / ".set.1").is_dir()
