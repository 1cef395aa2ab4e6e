"""serve.py --WATCH's live index in this process: its watcher threads over a real folder, then the same queries of
the live index and of a batch build of the folder as it ends (steps 1, 3, 4, 3', 4' from scratch) give the same
results, dedupe, filters and paging included, on both sides."""

import os
import shutil
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import make_image
from generations import a1111_text, png, write_folder

from prompt_search.embedding.visual import embed_images
from prompt_search.errors import UserError
from prompt_search.index.build import create_index
from prompt_search.index.keywords import parse_query
from prompt_search.live.arrivals import NETWORK_POLL_S, poll_interval
from prompt_search.live.compaction import fold
from prompt_search.live.watch import Watch
from prompt_search.search.core import open_sides
from prompt_search.search.hybrid import Wanted
from prompt_search.search.live_view import Delta, MergedIndex
from prompt_search.search.service import Answer, DecodeLimits, Searcher, split_negatives
from prompt_search.settings import EmbedSettings, IndexSettings, WatchSettings
from prompt_search.sources.folder_metadata import extract_folder_metadata


def settings_for(img_dir: Path, out_dir: Path, model: str, compact_items: int = 1000
                 ) -> tuple[WatchSettings, EmbedSettings, IndexSettings]:
    return (WatchSettings(str(img_dir), str(out_dir), "a1111", 0.0, compact_items, 4),
            EmbedSettings(model, "~/.cache/clip", "cpu", 4), IndexSettings("4G", "8G", 10.0))


def searcher_of(out_dir: Path, img_dir: Path, model: str) -> Searcher:
    return Searcher(open_sides(str(out_dir), model), model, None, str(img_dir), DecodeLimits.of(1 << 24, 1))


def wait_until(condition, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def settled(watch: Watch, generation: int) -> bool:
    """The watcher took in changes past generation, and nothing waits."""
    health = watch.health()
    return (health["generation"] > generation and not health["pending"] and not health["prompts_pending"]
            and not health["compacting"])


def results(searcher: Searcher, side: str, vector: np.ndarray, k: int, offset: int, dedupe: float,
            filters: dict) -> list[tuple[str, float, int]]:
    answer = searcher.search(side, vector, Wanted(k, offset, dedupe), filters, Answer([]))
    return [(hit.id, round(hit.score, 4), hit.alike) for hit in answer.hits]


def ids_of(searcher: Searcher, side: str) -> list[str]:
    """The id of every row a search of the side can return (a live side's hidden rows left out)."""
    searched = searcher.view[side].searched
    hidden = getattr(searched.index, "delta", None)
    rows = range(searched.index.ntotal)
    return [searched.items.rows([at])[0]["id"] for at in rows if hidden is None or not hidden.hidden[at]]


def a1111(path: Path, prompt: str, seed: int) -> Path:
    return png(path, {"parameters": a1111_text(prompt, seed)}, seed)


def indexed(tmp_path: Path, model: str, count: int, compact_items: int = 1000
            ) -> tuple[Path, Path, tuple[WatchSettings, EmbedSettings, IndexSettings]]:
    """A folder of count A1111 pictures ("picture number N"), indexed by a fold: (folder, OUT_DIR, settings)."""
    images, out = tmp_path / "images", tmp_path / "out"
    for seed in range(count):
        a1111(images / f"{seed:02d}.png", f"picture number {seed}", seed)
    settings = settings_for(images, out, model, compact_items)
    fold(*settings)
    return images, out, settings


@pytest.fixture
def watched(tmp_path, tiny_clip):
    """A folder of every format, indexed by the batch steps, and a Watch over it (its threads running)."""
    images, out = tmp_path / "images", tmp_path / "out"
    write_folder(images)
    watch_settings, embed, index = settings_for(images, out, tiny_clip)
    fold(watch_settings, embed, index)
    searcher = searcher_of(out, images, tiny_clip)
    watch = Watch(searcher, watch_settings, embed, index)
    watch.start()
    wait_until(lambda: watch.health()["ready"] and not watch.health()["pending"], what="the first look")
    yield tmp_path, images, searcher, watch
    watch.stop()


def test_live_index_equals_a_batch_build_of_the_folder(watched, tiny_clip):
    work, images, searcher, watch = watched
    generation = watch.health()["generation"]
    # new files: one with a prompt already held (by a later name: the prompt row stays), one by an earlier name
    # (the prompt row moves to it), one new prompt, one in a new subfolder
    a1111(images / "a1111/zebra.png", "a blue robot on a red background", 101)
    a1111(images / "a1111/aardvark.png", "A  castle in the clouds", 102)
    a1111(images / "new/kite.png", "a kite over the sea", 103)
    make_image(images / "new/plain.png", (80, 64), "RGB", 104)
    # changed: another prompt in the same file; deleted: the only holder of its prompt; renamed
    a1111(images / "a1111/robot.png", "a red robot on a blue background", 105)
    os.remove(images / "fooocus/dragon.png")
    os.replace(images / "novelai/fox.png", images / "novelai/vixen.png")
    (images / "a1111/owl.txt").write_text(a1111_text("an owl wearing a hat", 5), encoding="utf-8")
    wait_until(lambda: settled(watch, generation) and "a1111/zebra.png" in watch.state.files
               and "novelai/fox.png" not in watch.state.files and watch.state.files["a1111/robot.png"].row["prompt"]
               == "a red robot on a blue background" and watch.state.files["a1111/owl.png"].row["prompt"]
               == "an owl wearing a hat", what="every change taken in")

    batch = work / "batch"
    watch_settings, embed, index = settings_for(images, batch, tiny_clip)
    fold(watch_settings, embed, index)
    built = searcher_of(batch, images, tiny_clip)
    for side in ("images", "prompts"):  # the same rows, each once
        assert sorted(ids_of(searcher, side)) == sorted(ids_of(built, side)), side
    rng = np.random.default_rng(0)
    dimension = built.view["images"].searched.index.d
    compared = 0
    for _ in range(12):
        vector = rng.standard_normal(dimension).astype(np.float32)
        vector /= np.linalg.norm(vector)
        for side in ("images", "prompts"):
            for dedupe, filters, k, offset in ((1.0, {}, 30, 0), (0.9, {}, 5, 0), (1.0, {}, 4, 3),
                                               (0.9, {"width": (None, 96)}, 10, 0), (1.0, {"seed": (3, 104)}, 10, 1)):
                expected = results(built, side, vector, k, offset, dedupe, filters)
                assert results(searcher, side, vector, k, offset, dedupe, filters) == expected, (side, dedupe, filters)
                compared += len(expected)
    assert compared > 500
    # step 4's scores: new images are filtered, sorted and grouped by their adherence and prompt before a fold
    for _ in range(4):
        vector = rng.standard_normal(dimension).astype(np.float32)
        vector /= np.linalg.norm(vector)
        for sort, group in (("adherence", "none"), ("relevance", "prompt"), ("adherence", "prompt")):
            live, expected = (opened.search("images", vector, Wanted(20, dedupe_threshold=1.0),
                                            {"adherence": (-1.0, 1.0)}, Answer([]), sort, group).hits
                              for opened in (searcher, built))
            assert [(hit.id, hit.grouped) for hit in live] == [(hit.id, hit.grouped) for hit in expected], sort
            assert [hit.extra["adherence"] for hit in live] == pytest.approx(
                [hit.extra["adherence"] for hit in expected], abs=1e-4)
    assert "new/kite.png" in {hit.id for hit in live} and "new/plain.png" not in {hit.id for hit in live}
    # by words: a delta row matches as it would in a rebuilt index, a hidden one no more (scores use the published
    # index's statistics, so only the rows found are compared; the rows of exactly a pasted prompt come first)
    found = {}
    for text in ("robot", '"red background"', "castle clouds", "owl -hat", "a kite over the sea", "fox"):
        keywords = parse_query(*split_negatives(text))
        for side in ("images", "prompts"):
            live, expected = (opened.search(side, None, Wanted(50, mode="keyword", keywords=keywords), {},
                                            Answer([])).hits for opened in (searcher, built))
            assert {hit.id for hit in live} == {hit.id for hit in expected}, (text, side)
            found[text, side] = [hit.id for hit in live]
    assert found["a kite over the sea", "images"][0] == "new/kite.png" and found["owl -hat", "images"] == []
    assert "a1111/robot.png" in found["robot", "images"] and found["fox", "images"] == ["novelai/vixen.png"]
    # what the batch build holds, the live index finds by id, and describes alike
    for item_id in ("a1111/zebra.png", "a1111/aardvark.png", "new/kite.png", "novelai/vixen.png"):
        live, expected = searcher.by_ids([item_id]), built.by_ids([item_id])
        assert [(s, h.prompt, h.extra.get("seed")) for s, h in live] == \
            [(s, h.prompt, h.extra.get("seed")) for s, h in expected]
    assert not searcher.by_ids(["fooocus/dragon.png"]) and not searcher.by_ids(["novelai/fox.png"])


def test_a_fold_publishes_new_sets_and_the_server_switches_to_them(tmp_path, tiny_clip, capsys):
    images, out, (watch_settings, embed, index) = indexed(tmp_path, tiny_clip, 6, 12)
    searcher = searcher_of(out, images, tiny_clip)
    published = os.path.realpath(out / "knn_indices" / "visual")
    watch = Watch(searcher, watch_settings, embed, index)
    watch.start()
    try:
        for seed in range(6, 12):  # 6 images and 6 prompts: at 12 rows, a fold starts
            shutil.copy(a1111(tmp_path / f"{seed}.png", f"picture number {seed}", seed), images / f"{seed:02d}.png")
        wait_until(lambda: os.path.realpath(out / "knn_indices" / "visual") != published
                   and watch.health()["delta"]["images"] == 0 and not watch.health()["compacting"],
                   what="a fold published and switched to")
        view = searcher.view["images"]
        assert view.searched.index.ntotal == 12 and not view.searched.index.delta.hidden.any()
        found = searcher.by_ids([f"{s:02d}.png" for s in range(12)])
        assert [(side, hit.id) for side, hit in found] == [("images", f"{s:02d}.png") for s in range(12)]
        prompts = searcher.view["prompts"]
        assert prompts.searched.index.ntotal == 12 and all(prompts.ids.position(f"{s:02d}.png") is not None
                                                           for s in range(12))
        assert not watch.health()["error"]
        folded = capsys.readouterr().out  # the fold encoded nothing again: the delta's vectors were reused
        assert "visual_embeddings: 0 added, 12 reused, 0 removed" in folded, folded
        assert "textual_embeddings: 0 added, 12 reused, 0 removed" in folded
    finally:
        watch.stop()


def test_a_result_whose_file_vanished_before_the_watcher_saw_it_is_dropped(tmp_path, tiny_clip):
    images, out, (watch_settings, embed, index) = indexed(tmp_path, tiny_clip, 5)
    searcher = searcher_of(out, images, tiny_clip)
    vector = np.asarray(searcher.view["images"].searched.vectors[0], np.float32)
    before = results(searcher, "images", vector, 5, 0, 1.0, {})
    Watch(searcher, watch_settings, embed, index)  # not started: it has not seen the deletion
    os.remove(images / "03.png")
    after = results(searcher, "images", vector, 5, 0, 1.0, {})
    assert len(before) == 5 and after == [hit for hit in before if hit[0] != "03.png"]
    assert searcher.view["images"].ids.position("03.png") is not None  # still indexed: dropped as its file is gone
    assert len(results(searcher_of(out, images, tiny_clip), "images", vector, 5, 0, 1.0, {})) == 5  # not live: kept


@pytest.mark.parametrize("published", ["step 1", "steps 1, 3 and 4"])
def test_a_fold_killed_part_way_leaves_sets_the_next_start_catches_up_from(tmp_path, tiny_clip, published):
    """A fold killed after step 1 (or step 4) published leaves the metadata (and images) ahead of the other sets:
    the next start takes the images index as the record and ingests, and moves prompts, as far as needed."""
    images, out, (watch_settings, embed, index) = indexed(tmp_path, tiny_clip, 4)
    for seed in range(4, 8):
        a1111(images / f"{seed:02d}.png", f"picture number {seed}", seed)
    a1111(images / "00.png", "picture number zero, changed", 50)
    extract_folder_metadata(str(images), str(out), "a1111")
    if published != "step 1":
        embed_images(str(images), str(out / "visual_embeddings"), embed)
        create_index(str(out), "visual", index)
    searcher = searcher_of(out, images, tiny_clip)
    watch = Watch(searcher, watch_settings, embed, index)
    watch.start()
    try:
        wait_until(lambda: settled(watch, 0) and len(ids_of(searcher, "prompts")) == 8, what="caught up")
        batch = tmp_path / "batch"
        fold(*settings_for(images, batch, tiny_clip))
        built = searcher_of(batch, images, tiny_clip)
        for side in ("images", "prompts"):
            assert sorted(ids_of(searcher, side)) == sorted(ids_of(built, side))
            live = {hit.id: hit.prompt for _, hit in searcher.by_ids(ids_of(built, side))}
            assert live == {hit.id: hit.prompt for _, hit in built.by_ids(ids_of(built, side))}
    finally:
        watch.stop()


def test_a_folder_on_a_network_mount_is_polled(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\nnas:/export /mnt/nas nfs4 rw 0 0\n"
                      "//pc/share /mnt/my\\040share cifs rw 0 0\n/dev/sdb1 /mnt/nas/local ext4 rw 0 0\n")
    assert poll_interval("/mnt/nas/sd/outputs", 0.0, str(mounts)) == NETWORK_POLL_S
    assert poll_interval("/mnt/my share/x", 0.0, str(mounts)) == NETWORK_POLL_S
    assert poll_interval("/mnt/nas/local/x", 0.0, str(mounts)) == 0.0  # the deepest mount holding it counts
    assert poll_interval("/home/me/outputs", 0.0, str(mounts)) == 0.0
    assert poll_interval("/home/me/outputs", 5.0, str(mounts)) == 5.0


def test_a_watch_refuses_another_folder_and_sidecar_ids(tmp_path, tiny_clip):
    images, out, (watch_settings, embed, index) = indexed(tmp_path, tiny_clip, 3)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(UserError, match="holds the index of .*images, not of .*other"):
        Watch(searcher_of(out, images, tiny_clip), settings_for(other, out, tiny_clip)[0], embed, index)
    (images / "01.json").write_text('{"id": "row-17"}')  # img2dataset's sidecar: the id is not the path
    fold(watch_settings, embed, index)
    with pytest.raises(UserError, match="has the id 'row-17' from its sidecar"):
        Watch(searcher_of(out, images, tiny_clip), watch_settings, embed, index)


@pytest.mark.parametrize("lossy", [False, True])
def test_merged_index_leaves_hidden_rows_out_and_keeps_a_lossy_index_candidates_whole(lossy):
    rng = np.random.default_rng(1)
    published, added = rng.standard_normal((200, 16), dtype=np.float32), rng.standard_normal((50, 16), np.float32)
    main = faiss.IndexFlatIP(16)
    main.add(published)
    hidden = np.zeros(250, bool)
    hidden[rng.choice(250, 60, replace=False)] = True
    merged = MergedIndex(main, Delta(added, tuple({} for _ in range(50)), hidden), lossy)
    query = rng.standard_normal((1, 16), dtype=np.float32)
    scores, labels = merged.search(query, 10)
    every = np.concatenate([published, added]) @ query[0]
    alive = np.flatnonzero(~hidden)
    if lossy:  # the published index's alive rows among its top 10 + hidden ones, and the delta's top 10 alive, for
        # the re-rank to order
        top_main = [p for p in np.argsort(-every[:200])[:10 + int(hidden[:200].sum())] if not hidden[p]]
        top_delta = [p for p in 200 + np.argsort(-every[200:]) if not hidden[p]][:10]
        assert set(labels[0]) == set(top_main) | set(top_delta)
    else:
        assert list(labels[0]) == list(alive[np.argsort(-every[alive], kind="stable")][:10])
    assert np.allclose(scores[0], every[labels[0]], atol=1e-5)
