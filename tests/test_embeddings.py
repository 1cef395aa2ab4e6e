"""Step 3 on a plain folder of images: modes, bad files, restarts, changed inputs, missing weights."""

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, make_image, run_script
from PIL import Image

from prompt_search.embedding import set_writer as embed
from prompt_search.embedding.set_writer import save_batch
from prompt_search.embedding.visual import embed_images
from prompt_search.errors import UserError
from prompt_search.settings import EmbedSettings

MODES = ["RGB", "RGBA", "P", "L", "CMYK", "I;16"]


def read_folder(folder):
    """All ids and vectors of an embeddings folder, in file order."""
    ids = [np.load(p, allow_pickle=False) for p in sorted((folder / "ids").glob("*.npy"))]
    vectors = [np.load(p, allow_pickle=False) for p in sorted((folder / "embeddings").glob("*.npy"))]
    return np.concatenate(ids), np.concatenate(vectors)


def test_plain_folder_every_mode_nested_and_bad_files(tmp_path, tiny_clip):
    images = tmp_path / "mine"
    for seed, mode in enumerate(MODES):
        name = f"{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
        make_image(images / ("deep/er" if seed % 2 else "") / name, (200 + 40 * seed, 260), mode, seed)
    (images / "zero.png").write_bytes(b"")
    (images / "notes.png").write_text("not an image")
    (images / "truncated.png").write_bytes((images / "RGB.png").read_bytes()[:200])
    Image.new("L", (9000, 9000)).save(images / "bomb.png")  # 81 Mpixel, a few KB on disk
    (images / "readme.txt").write_text("ignored: not an image extension")
    written, skipped = embed_images(str(images), str(tmp_path / "out"),
                                    EmbedSettings(tiny_clip, "", "cpu", 4, num_workers=0))
    assert written == len(MODES)
    reasons = {path.rsplit("/", 1)[-1]: reason for path, reason in skipped}
    assert set(reasons) == {"zero.png", "notes.png", "truncated.png", "bomb.png"}
    assert "too large" in reasons["bomb.png"]
    ids, vectors = read_folder(tmp_path / "out")
    expected = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png") if p.name[0].isupper())
    expected += ["CMYK.jpg"]
    assert sorted(ids) == sorted(expected) and len(vectors) == len(ids)
    assert len(set(map(bytes, vectors))) == len(vectors)  # every image its own vector
    with open(tmp_path / "out" / "skipped.csv") as f:
        assert len(f.readlines()) == 1 + 4


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    from prompt_search.pixels import open_rgb

    path = make_image(tmp_path / "deep.png", (64, 64), "I;16", 3)
    as_8bit = np.asarray(Image.open(path)) // 257
    assert np.abs(np.asarray(open_rgb(str(path)))[..., 0].astype(int) - as_8bit).max() <= 1


def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_clip):
    images = tmp_path / "images"
    for seed in range(150):
        make_image(images / f"{seed:03d}.png", (64, 64 + seed % 5), "RGB", seed)
    args = ["--IMG_DIR=images", f"--MODEL={tiny_clip}", "--BATCH_SIZE=1", "--NUM_WORKERS=0"]
    run_script("extract_visual_clip_embeddings.py", *args, "--OUT_DIR=whole", cwd=tmp_path)

    env = {"PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen([sys.executable, str(REPO / "extract_visual_clip_embeddings.py"), *args,
                                "--OUT_DIR=killed"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    batches = tmp_path / "killed" / ".visual_embeddings.1" / "batches"  # the set is published once complete
    deadline = time.time() + 120
    while time.time() < deadline and len(list(batches.glob("*.json"))) < 20:
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 20 <= len(list(batches.glob("*.json"))) < 150
    assert not (tmp_path / "killed" / "visual_embeddings").exists()  # nothing half done is published

    resumed = run_script("extract_visual_clip_embeddings.py", *args, "--OUT_DIR=killed", cwd=tmp_path)
    assert re.search(r"embedding \d+ of 150 images", resumed.stdout)
    ids, vectors = read_folder(tmp_path / "killed" / "visual_embeddings")
    whole_ids, whole_vectors = read_folder(tmp_path / "whole" / "visual_embeddings")
    assert list(ids) == list(whole_ids) and len(set(ids)) == 150
    np.testing.assert_allclose(vectors, whole_vectors, atol=1e-6)
    assert not list((tmp_path / "killed").rglob("*.partial"))  # the batch cut by the kill was redone
    again = run_script("extract_visual_clip_embeddings.py", *args, "--OUT_DIR=killed", cwd=tmp_path)
    assert not re.search(r"embedding \d+ of", again.stdout)  # nothing left to do


def stop_after_one_batch(monkeypatch) -> None:
    """Make step 3 stop (as Ctrl-C does) once it has saved one batch."""
    calls = []

    def stopped_after_one_batch(*args):
        if calls:
            raise KeyboardInterrupt
        calls.append(args)
        save_batch(*args)

    monkeypatch.setattr(embed, "save_batch", stopped_after_one_batch)


def test_changed_inputs_make_a_new_set_and_unfinished_work_is_kept(tmp_path, tiny_clip, monkeypatch):
    images = tmp_path / "images"
    for seed in range(3):
        make_image(images / f"{seed}.png", (64, 64), "RGB", seed)
    out = tmp_path / "out"
    embed_images(str(images), str(out), EmbedSettings(tiny_clip, "", "cpu", 2, num_workers=0))
    make_image(images / "3.png", (64, 64), "RGB", 3)
    embed_images(str(images), str(out), EmbedSettings(tiny_clip, "", "cpu", 2, num_workers=0))
    assert sorted(read_folder(out)[0]) == ["0.png", "1.png", "2.png", "3.png"]  # replaced whole, not mixed

    stop_after_one_batch(monkeypatch)
    make_image(images / "4.png", (64, 64), "RGB", 4)
    with pytest.raises(KeyboardInterrupt):
        embed_images(str(images), str(out), EmbedSettings(tiny_clip, "", "cpu", 2, num_workers=0))
    monkeypatch.setattr(embed, "save_batch", save_batch)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.npy")}
    with pytest.raises(UserError, match="unfinished embeddings of other inputs .batch_size changed"):
        embed_images(str(images), str(out), EmbedSettings(tiny_clip, "", "cpu", 3, num_workers=0))
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*.npy")}
    assert len(read_folder(out)[0]) == 4  # the published set is untouched meanwhile
    embed_images(str(images), str(out), EmbedSettings(tiny_clip, "", "cpu", 2, num_workers=0))
    assert len(read_folder(out)[0]) == 5


def test_a_model_typo_leaves_nothing_to_refuse(tmp_path, tiny_clip):
    make_image(tmp_path / "images" / "a.png", (64, 64))
    with pytest.raises(UserError, match="neither a CLIP model name"):
        embed_images(str(tmp_path / "images"), str(tmp_path / "out"),
                     EmbedSettings("ViT-Z/99", "", "cpu", 8, num_workers=0))
    written, _ = embed_images(str(tmp_path / "images"), str(tmp_path / "out"),
                              EmbedSettings(tiny_clip, "", "cpu", 8, num_workers=0))
    assert written == 1


def test_bad_sidecars_fall_back_to_path_ids_and_shared_ids_are_reported(tmp_path, tiny_clip, capsys):
    images = tmp_path / "images" / "00000"
    sidecars = {
        "good": '{"id": "row-1", "url": "http://x/1.jpg"}',
        "twin": '{"id": "row-1"}',  # a second sidecar naming the same row
        "broken": '{"id": "row-2"',
        "a_list": '["row-3"]',
        "binary": b"\xff\xfe\x00not json",
        "huge_id": '{"id": "' + "x" * 10_000_000 + '"}',
        "long_id": '{"id": "' + "y" * 300 + '"}',
    }
    for seed, (name, text) in enumerate(sidecars.items()):
        make_image(images / f"{name}.jpg", (64, 64), "RGB", seed)
        sidecar = images / f"{name}.json"
        sidecar.write_bytes(text) if isinstance(text, bytes) else sidecar.write_text(text)
    written, skipped = embed_images(str(tmp_path / "images"), str(tmp_path / "out"),
                                    EmbedSettings(tiny_clip, "", "cpu", 4, num_workers=0))
    assert written == 6
    assert skipped == [(str(images / "twin.jpg"), f"duplicate id 'row-1': {images / 'good.jpg'} has it already")]
    ids = sorted(read_folder(tmp_path / "out")[0])
    assert ids == ["00000/a_list.jpg", "00000/binary.jpg", "00000/broken.jpg", "00000/huge_id.jpg",
                   "00000/long_id.jpg", "row-1"]
    assert "5 sidecars give no usable id" in capsys.readouterr().out
    with open(tmp_path / "out" / "skipped.csv") as f:
        assert "duplicate id 'row-1'" in f.read()


def test_missing_weights_offline_say_where_to_put_them(tmp_path):
    make_image(tmp_path / "images" / "a.png", (64, 64))
    result = run_script("extract_visual_clip_embeddings.py", "--IMG_DIR=images", f"--MODEL_DIR={tmp_path}/w",
                        cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{tmp_path}/w/ViT-B-32.pt" in result.stderr and "--MODEL=" in result.stderr


def test_unknown_model_and_missing_folder(tmp_path):
    result = run_script("extract_visual_clip_embeddings.py", "--IMG_DIR=nowhere", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "nowhere not found" in result.stderr
    make_image(tmp_path / "images" / "a.png", (64, 64))
    result = run_script("extract_visual_clip_embeddings.py", "--IMG_DIR=images", "--MODEL=ViT-Z/99", cwd=tmp_path,
                        check=False)
    assert result.returncode == 1 and "ViT-Z/99 is neither a CLIP model name" in result.stderr
    assert "Traceback" not in result.stderr


def test_manifest_records_the_inputs(tmp_path, tiny_clip):
    make_image(tmp_path / "images" / "a.png", (64, 64))
    embed_images(str(tmp_path / "images"), str(tmp_path / "out"), EmbedSettings(tiny_clip, "", "cpu", 8, num_workers=0))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["count"] == 1 and manifest["batch_size"] == 8 and tiny_clip in manifest["model"]


def test_webdataset_shards_get_a_hint(tmp_path, tiny_clip):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "00000.tar").write_bytes(b"")
    with pytest.raises(UserError, match="OUTPUT_FORMAT=files"):
        embed_images(str(tmp_path / "images"), str(tmp_path / "out"),
                     EmbedSettings(tiny_clip, "", "cpu", 2, num_workers=0))
