"""Step 3 reruns: only new or changed contents reach the model; the set equals a full recompute."""

import shutil

import numpy as np
import pytest
from conftest import make_image
from test_embeddings import read_folder, stop_after_one_batch

from prompt_search.embedding import set_writer as embed
from prompt_search.embedding import visual
from prompt_search.embedding.set_writer import save_batch
from prompt_search.embedding.visual import embed_images
from prompt_search.settings import EmbedSettings


def watch_the_model(monkeypatch) -> list[str]:
    """The ids (or paths, for skipped images) of every image the CPU input path hands to the model."""
    seen = []
    cpu_batches = visual.cpu_batches

    def counted(*args, **kwargs):
        for crops, ids, skipped in cpu_batches(*args, **kwargs):
            seen.extend([*ids, *(path.rsplit("/", 1)[-1] for path, _ in skipped)])
            yield crops, ids, skipped

    monkeypatch.setattr(visual, "cpu_batches", counted)
    return seen


def same_set(folder, reference) -> None:
    ids, vectors = read_folder(folder)
    reference_ids, reference_vectors = read_folder(reference)
    assert list(ids) == list(reference_ids)
    np.testing.assert_allclose(vectors, reference_vectors, atol=1e-6)
    assert (folder / "skipped.csv").read_text() == (reference / "skipped.csv").read_text()


@pytest.fixture
def changed_folder(tmp_path, tiny_clip):
    """A folder embedded once into tmp_path/out, then changed: 2 added, 1 deleted, renamed, copied, rewritten."""
    images = tmp_path / "images"
    for seed in range(7):
        make_image(images / f"{seed}.png", (64, 64 + seed), "RGB", seed)
    (images / "bad.png").write_bytes(b"")  # skipped by every run, never reused
    embed_images(str(images), str(tmp_path / "out"), EmbedSettings(tiny_clip, "", "cpu", 3, num_workers=0))
    (images / "0.png").unlink()
    (images / "1.png").rename(images / "renamed.png")
    shutil.copyfile(images / "2.png", images / "copy.png")
    make_image(images / "3.png", (64, 64), "RGB", 30)
    make_image(images / "7.png", (64, 64), "RGB", 7)
    make_image(images / "8.png", (70, 64), "RGB", 8)
    return images


def test_rerun_encodes_only_new_contents_and_equals_a_full_run(tmp_path, tiny_clip, monkeypatch, capsys,
                                                               changed_folder):
    seen = watch_the_model(monkeypatch)
    written, skipped = embed_images(str(changed_folder), str(tmp_path / "out"),
                                    EmbedSettings(tiny_clip, "", "cpu", 3, num_workers=0))
    assert sorted(seen) == ["3.png", "7.png", "8.png", "bad.png"]  # renamed and copied files are reused
    assert "4 added, 6 reused, 2 removed" in capsys.readouterr().out  # removed: 0.png and 3.png's old content
    assert written == 9 and [path.rsplit("/", 1)[-1] for path, _ in skipped] == ["bad.png"]

    embed_images(str(changed_folder), str(tmp_path / "full"), EmbedSettings(tiny_clip, "", "cpu", 3, num_workers=0))
    same_set(tmp_path / "out", tmp_path / "full")
    ids, vectors = read_folder(tmp_path / "out")
    rows = dict(zip(ids, vectors, strict=True))
    np.testing.assert_allclose(rows["copy.png"], rows["2.png"], atol=1e-6)


def test_a_rename_alone_never_loads_the_model(tmp_path, tiny_clip, monkeypatch, capsys):
    images = tmp_path / "images"
    for seed in range(4):
        make_image(images / f"{seed}.png", (64, 64), "RGB", seed)
    embed_images(str(images), str(tmp_path / "out"), EmbedSettings(tiny_clip, "", "cpu", 3, num_workers=0))
    before = read_folder(tmp_path / "out")
    (images / "0.png").rename(images / "z.png")

    def no_model(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(visual, "load", no_model)
    embed_images(str(images), str(tmp_path / "out"), EmbedSettings(tiny_clip, "", "cpu", 3, num_workers=0))
    assert "0 added, 4 reused, 0 removed" in capsys.readouterr().out
    ids, vectors = read_folder(tmp_path / "out")
    assert list(ids) == ["1.png", "2.png", "3.png", "z.png"]
    np.testing.assert_allclose(vectors, before[1][[1, 2, 3, 0]], atol=1e-6)


def test_a_stopped_incremental_run_resumes_to_the_full_result(tmp_path, tiny_clip, monkeypatch, changed_folder):
    stop_after_one_batch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        embed_images(str(changed_folder), str(tmp_path / "out"), EmbedSettings(tiny_clip, "", "cpu", 3, num_workers=0))
    monkeypatch.setattr(embed, "save_batch", save_batch)
    seen = watch_the_model(monkeypatch)
    embed_images(str(changed_folder), str(tmp_path / "out"), EmbedSettings(tiny_clip, "", "cpu", 3, num_workers=0))
    assert len(seen) < 4  # the first batch, with 3.png, was done before the stop
    embed_images(str(changed_folder), str(tmp_path / "full"), EmbedSettings(tiny_clip, "", "cpu", 3, num_workers=0))
    same_set(tmp_path / "out", tmp_path / "full")
