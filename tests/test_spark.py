"""Steps 2-4 and 3' with DISTRIBUTOR=pyspark on a real local Spark give the local distributor's outputs, byte for
byte."""

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import make_image, run_script, serve, write_open_prompts_csv

from prompt_search.embedding.textual import embed_prompts
from prompt_search.embedding.visual import embed_images
from prompt_search.index.build import build_index
from prompt_search.layout import INDEX_FILE, INFOS_FILE, KEYWORDS_FOLDER, METADATA_FILE
from prompt_search.settings import DownloadSettings, EmbedSettings, IndexSettings
from prompt_search.sources.download import download_images
from prompt_search.sources.open_prompts import extract_links

pytest.importorskip("pyspark")


@pytest.fixture(scope="session")
def spark():
    """One local Spark for every test here (its JVM takes seconds to start): 2 cores, 4 attempts per task."""
    from prompt_search.spark import local_master, spark_session

    with spark_session(local_master("2")) as session:
        yield session


def files_of(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file below folder (the set a link points to, followed), by relative path; the keyword index's files
    by what they hold (tantivy names its segments by random ids): its documents and words, in source.json."""
    root = folder.resolve()
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(skip) and KEYWORDS_FOLDER not in p.relative_to(root).parts}


def test_download_on_spark_gives_the_same_images_sidecars_and_summary(tmp_path, spark):
    served = tmp_path / "served"
    names = [f"{i}.png" for i in range(6)]
    for seed, name in enumerate(names):
        make_image(served / name, (120 + 10 * seed, 90), "RGB", seed)
    with serve(served) as base:
        write_open_prompts_csv(tmp_path / "p.csv", [(f"prompt {n}", f"{base}/{n}") for n in [*names, "gone.png"]])
        extract_links(str(tmp_path / "p.csv"), str(tmp_path / "out"))
        metadata = str(tmp_path / "out" / METADATA_FILE)
        summaries = {distributor: download_images(metadata, str(tmp_path / distributor),
                                                  DownloadSettings(64, "keep_ratio", 2, 1, 5, 0, "files",
                                                                   distributor=distributor))
                     for distributor in ("local", "pyspark")}
    assert summaries["local"] == summaries["pyspark"] and summaries["local"].successes == 6
    # the stats hold timings (what they count is the summary above); a shard's table lists its images in the order
    # the download threads finished them, whichever the distributor
    varying = ("_stats.json", ".parquet")
    assert files_of(tmp_path / "local", varying) == files_of(tmp_path / "pyspark", varying)
    tables = [pq.read_table(tmp_path / d / "00000.parquet").sort_by("key") for d in ("local", "pyspark")]
    assert tables[0].equals(tables[1])


@pytest.mark.parametrize("index_key", ["", "OPQ4_16,IVF8,PQ4x8"])  # autofaiss's choice; an OPQ one (a faiss shim)
def test_index_on_spark_is_the_local_index_with_the_same_items_vectors_and_source(tmp_path, spark, index_key):
    from test_index import fake_embeddings

    fake_embeddings(tmp_path / "emb", [50] * 25)
    for distributor in ("local", "pyspark"):
        build_index(str(tmp_path / "emb"), str(tmp_path / distributor),
                    IndexSettings("1G", "2G", 10.0, distributor=distributor, index_key=index_key), "")
    # autofaiss tunes nprobe from measured search times (in infos.json, and in the index): the machine's load
    # may change it between any two builds, so the indices are compared with the same nprobe
    timed = (INFOS_FILE, INDEX_FILE)
    assert files_of(tmp_path / "local", timed) == files_of(tmp_path / "pyspark", timed)
    infos = [json.loads((tmp_path / d / INFOS_FILE).read_text()) for d in ("local", "pyspark")]
    assert infos[0]["index_key"] == infos[1]["index_key"] == (index_key or infos[0]["index_key"])
    assert infos[1]["nb vectors"] == 50 * 25
    indices = [faiss.read_index(str(tmp_path / d / INDEX_FILE)) for d in ("local", "pyspark")]
    for index in indices:
        faiss.extract_index_ivf(index).nprobe = 1
    assert np.array_equal(faiss.serialize_index(indices[0]), faiss.serialize_index(indices[1]))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Images of every size, a broken one (skipped), nested folders: 40 items, 14 batches of 3."""
    folder = tmp_path_factory.mktemp("images")
    for seed in range(39):
        make_image(folder / f"{seed % 3}" / f"{seed:03d}.png", (64 + seed % 5, 64), "RGB", seed)
    (folder / "1" / "broken.png").write_bytes(b"not a png")
    return folder


def embed(images: Path, out: Path, tiny_clip: str, distributor: str) -> list[tuple[str, str]]:
    return embed_images(str(images), str(out),
                        EmbedSettings(tiny_clip, "", "cpu", 3, num_workers=0, decode="", distributor=distributor))[1]


def test_embeddings_on_spark_are_the_local_files_byte_for_byte(tmp_path, spark, images, tiny_clip):
    skipped = {distributor: embed(images, tmp_path / distributor, tiny_clip, distributor)
               for distributor in ("local", "pyspark")}
    assert skipped["local"] == skipped["pyspark"] and len(skipped["local"]) == 1
    local = files_of(tmp_path / "local")
    assert len([name for name in local if name.startswith("batches/")]) == 14
    assert files_of(tmp_path / "pyspark") == local


def test_prompt_embeddings_on_spark_are_the_local_files_byte_for_byte(tmp_path, spark, tiny_clip):
    from test_listing import variants, write_metadata

    write_metadata(tmp_path / "metadata.parquet", variants(random.Random(3), 60))
    for distributor in ("local", "pyspark"):
        embed_prompts(str(tmp_path / "metadata.parquet"), str(tmp_path / distributor / "textual_embeddings"),
                      EmbedSettings(tiny_clip, "", "cpu", 4, distributor=distributor))
    local = files_of(tmp_path / "local" / "textual_embeddings")
    assert len([name for name in local if name.startswith("batches/")]) > 3
    assert files_of(tmp_path / "pyspark" / "textual_embeddings") == local


def test_the_prompt_scripts_run_on_their_own_local_spark_as_locally(tmp_path, tiny_clip):
    """The scripts as a user runs them: each starts and stops its own local Spark (no session given)."""
    from test_listing import variants, write_metadata

    for distributor in ("local", "pyspark"):
        out = tmp_path / distributor
        (out / METADATA_FILE).parent.mkdir(parents=True)
        write_metadata(out / METADATA_FILE, variants(random.Random(5), 30))
        for script in ("extract_textual_clip_embeddings.py", "create_textual_knn_indices.py"):
            ran = run_script(script, f"--OUT_DIR={out}", f"--MODEL={tiny_clip}", "--DEVICE=cpu", "--BATCH_SIZE=4",
                             f"--DISTRIBUTOR={distributor}", "--SPARK_MASTER=local[2]", cwd=tmp_path)
            assert ("on Spark local[2]" in ran.stdout) == (distributor == "pyspark")
    assert files_of(tmp_path / "pyspark" / "textual_embeddings") == files_of(tmp_path / "local" / "textual_embeddings")
    index_sets = [files_of(tmp_path / d / "knn_indices" / "textual", (INFOS_FILE, INDEX_FILE)) for d in ("local",
                                                                                                     "pyspark")]
    assert index_sets[0] == index_sets[1] and "items.arrow" in index_sets[0]  # the index itself: nprobe is timed


def python_workers(spark) -> list[int]:
    """The pids of the Python workers our Spark's daemon forked (other Sparks on this machine are not ours)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the field after the state
        except OSError:  # ended meanwhile
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    daemons, todo = [], [spark.sparkContext._gateway.proc.pid]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes() if Path(f"/proc/{child}").exists() else b""
            (daemons if b"pyspark.daemon" in cmdline else todo).append(child)
    return [worker for daemon in daemons for worker in children.get(daemon, [])]


def test_a_task_killed_mid_run_is_retried_from_its_complete_batches_to_the_same_files(tmp_path, spark, tiny_clip):
    for seed in range(120):
        make_image(tmp_path / "many" / f"{seed:03d}.png", (64, 64 + seed % 5), "RGB", seed)
    local = tmp_path / "local"
    embed_images(str(tmp_path / "many"), str(local), EmbedSettings(tiny_clip, "", "cpu", 1, num_workers=0))
    batches = tmp_path / ".killed.1" / "batches"  # the unpublished set
    killed: list[tuple[float, list[str]]] = []

    def kill_once_some_batches_are_done():
        deadline = time.time() + 300
        while time.time() < deadline and len(list(batches.glob("*.json"))) < 4:
            time.sleep(0.005)
        done = sorted(p.name for p in batches.glob("*.json"))
        workers = python_workers(spark)
        for worker in workers:
            os.kill(worker, signal.SIGKILL)
        killed.append((time.time(), done if workers else []))

    killer = threading.Thread(target=kill_once_some_batches_are_done)
    killer.start()
    embed_images(str(tmp_path / "many"), str(tmp_path / "killed"),
                 EmbedSettings(tiny_clip, "", "cpu", 1, num_workers=0, decode="", distributor="pyspark"))
    killer.join()
    when, done_before = killed[0]
    assert 4 <= len(done_before) < 120, "the run ended before a task could be killed"
    assert files_of(tmp_path / "killed") == files_of(local)
    # the batches complete at the kill were kept by the retried tasks, not computed again
    assert all((tmp_path / "killed" / "batches" / name).stat().st_mtime < when for name in done_before)


def test_steps_2_to_4_on_spark_at_a_url_write_the_local_distributors_files(tmp_path, spark, images, tiny_clip,
                                                                          monkeypatch):
    """Spark tasks read the images and write their batches through fsspec (file://: the workers are other
    processes), as the local distributor does at the same URL; the index is built from the set at the URL."""
    from test_storage import files_at

    from prompt_search.output_sets import current_set

    monkeypatch.setattr("prompt_search.storage.CACHE_DIR", str(tmp_path / "cache"))
    served = tmp_path / "served"
    for seed in range(3):
        make_image(served / f"{seed}.png", (90, 70 + seed), "RGB", seed)
    with serve(served) as base:
        write_open_prompts_csv(tmp_path / "p.csv", [(f"prompt {i}", f"{base}/{i}.png") for i in range(3)])
        extract_links(str(tmp_path / "p.csv"), f"file://{tmp_path}/out")
        for distributor in ("local", "pyspark"):
            summary = download_images(f"file://{tmp_path}/out/{METADATA_FILE}",
                                      f"file://{tmp_path}/{distributor}/img",
                                      DownloadSettings(64, "keep_ratio", 2, 1, 5, 0, "files", distributor=distributor))
            assert summary.successes == 3
    downloaded = [{n: data for n, data in files_at(f"file://{tmp_path}/{d}/img").items()
                   if n.endswith((".jpg", ".json")) and not n.endswith("_stats.json")} for d in ("local", "pyspark")]
    assert downloaded[0] == downloaded[1] and len(downloaded[0]) == 2 * 3
    sets = {}
    for distributor in ("local", "pyspark"):
        at = f"file://{tmp_path}/{distributor}"
        skipped = embed_images(f"file://{images}", f"{at}/visual_embeddings",
                               EmbedSettings(tiny_clip, "", "cpu", 3, num_workers=0, decode="",
                                             distributor=distributor))[1]
        assert len(skipped) == 1 and skipped[0][0] == f"file://{images}/1/broken.png"
        build_index(f"{at}/visual_embeddings", f"{at}/knn_indices/visual",
                    IndexSettings("1G", "2G", 10.0, distributor=distributor), "")
        sets[distributor] = [files_at(current_set(f"{at}/{name}")) for name in ("visual_embeddings",
                                                                               "knn_indices/visual")]
    assert sets["local"][0] == sets["pyspark"][0]
    assert len([name for name in sets["local"][0] if name.startswith("batches/")]) == 14
    for name in ("items.arrow", "vectors.npy"):
        assert sets["local"][1][name] == sets["pyspark"][1][name]
