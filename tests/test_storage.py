"""Output sets and the steps' files at a URL, through fsspec's own filesystems (memory:// in this process,
file:// where other processes write too), against the same steps on local paths."""

import fcntl
import json
import os
import random
import runpy
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import fsspec
import numpy as np
import pytest
from conftest import REPO, killed_after_batches, write_open_prompts_csv
from fsspec import AbstractFileSystem
from test_index import fake_embeddings

from prompt_search import storage
from prompt_search.claims import LEASE_S, overwrite
from prompt_search.embedding.textual import embed_prompts
from prompt_search.errors import UserError
from prompt_search.index.build import build_index, create_index
from prompt_search.output_sets import (
    MARKER,
    TOMBSTONE,
    current_set,
    local_copy,
    local_set,
    new_set,
    output_set,
    publish_set,
    published_set,
    withdraw_set,
)
from prompt_search.search.core import open_index
from prompt_search.settings import EmbedSettings, IndexSettings


@pytest.fixture
def memory_url(monkeypatch, tmp_path) -> str:
    """A fresh folder of fsspec's in-memory filesystem; this test's own cache folder."""
    monkeypatch.setattr(storage, "CACHE_DIR", str(tmp_path / "cache"))
    return f"memory://test-{uuid.uuid4().hex}"


def files_at(url: str) -> dict[str, bytes]:
    """Every file below the folder at url, by path below it; a set's marker aside (a local set has none)."""
    fs, inner = storage.filesystem(url)
    return {os.path.relpath(path, inner): fs.cat_file(path) for path in sorted(fs.find(inner))
            if os.path.relpath(path, inner) != MARKER}


def local_files(folder: str) -> dict[str, bytes]:
    root = Path(folder).resolve()
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_set_at_a_url_is_published_by_its_marker_and_a_reader_keeps_its_set(memory_url):
    path = f"{memory_url}/out/set"
    assert current_set(path) is None and local_set(path) is None
    for generation in range(1, 4):
        folder = new_set(path)
        with storage.atomic_write(f"{folder}/value") as f:
            f.write(str(generation).encode())
        resolved_before = current_set(path)
        publish_set(path, folder)
        if resolved_before:  # a reader that resolved the pointer just before still reads its whole set
            assert storage.read_bytes(f"{resolved_before}/value") == str(generation - 1).encode()
    fs, inner = storage.filesystem(f"{memory_url}/out")
    assert sorted(os.path.basename(p) for p in fs.ls(inner, detail=False)) == [".set.2", ".set.3"]
    assert current_set(path) == f"{memory_url}/out/.set.3"  # the URL as given: memory://x, not memory:///x
    assert len(storage.read_bytes(f"{memory_url}/out/.set.3/{MARKER}")) == 32
    unpublished = new_set(path)  # being written: not published, whatever its number
    with storage.atomic_write(f"{unpublished}/value") as f:
        f.write(b"4, half written")
    assert storage.read_bytes(f"{current_set(path)}/value") == b"3"
    assert withdraw_set(path) and current_set(path) is None and not fs.ls(inner)


def test_a_withdrawal_cut_short_leaves_the_newest_set_not_an_older_one(memory_url, monkeypatch):
    path = f"{memory_url}/set"
    for value in ("old", "new"):
        with output_set(path) as folder:
            Path(folder, "value").write_text(value)
    removed = []

    def killed_after_one(marker: str) -> None:
        if removed:
            raise KeyboardInterrupt
        removed.append(marker)
        original(marker)

    original = storage.remove_file
    monkeypatch.setattr(storage, "remove_file", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        withdraw_set(path)
    assert removed == [f"{memory_url}/.set.1/{MARKER}"]
    assert storage.read_bytes(f"{current_set(path)}/value") == b"new"


def test_a_failed_block_leaves_the_published_set_and_uploads_nothing(memory_url):
    path = f"{memory_url}/set"
    with output_set(path) as folder:
        assert not storage.is_url(folder)  # built on this machine, uploaded whole
        Path(folder, "a").write_text("old")
    before = files_at(memory_url)
    with pytest.raises(RuntimeError), output_set(path) as folder:
        Path(folder, "a").write_text("new, half written")
        raise RuntimeError("killed")
    assert files_at(memory_url) == before
    assert not list(Path(storage.CACHE_DIR).rglob(".build-*"))  # the local build folder is gone too


def test_local_copies_are_kept_by_publication(memory_url):
    path = f"{memory_url}/set"
    copies = []
    for value in ("1", "2", "3"):
        with output_set(path) as folder:
            Path(folder, "sub").mkdir()
            Path(folder, "sub", "value").write_text(value)
        copies.append(local_set(path))
        assert Path(copies[-1], "sub", "value").read_text() == value
        assert local_set(path) == copies[-1]  # read again: the same copy, not downloaded again
    assert len(set(copies)) == 3
    assert not os.path.exists(copies[0]) and os.path.isdir(copies[1])  # the copy before stays for its reader
    left = os.path.join(storage.cache_folder(path), ".download-killed")  # what a killed download left: its lock free
    os.makedirs(left)
    Path(f"{left}.lock").write_text("")
    withdraw_set(path)
    with output_set(path) as folder:  # the same generation number as the withdrawn set: still a new copy
        Path(folder, "value").write_text("after")
    assert Path(local_set(path), "value").read_text() == "after"
    assert not os.path.exists(left)


def test_atomic_write_at_a_url_leaves_the_old_content_when_it_fails(memory_url):
    path = f"{memory_url}/deep/folder/file.json"
    with storage.atomic_write(path) as f:
        f.write(b"old")
    with pytest.raises(RuntimeError), storage.atomic_write(path) as f:
        f.write(b"new")
        raise RuntimeError("failed")
    assert storage.read_bytes(path) == b"old" and not storage.exists(f"{path}.partial")


def test_prompt_embeddings_and_index_at_a_url_are_the_local_ones(tmp_path, memory_url, tiny_clip):
    from test_listing import variants, write_metadata

    write_metadata(tmp_path / "metadata.parquet", variants(random.Random(7), 40))
    counts = {}
    for where in (str(tmp_path / "local"), memory_url):
        counts[where] = embed_prompts(str(tmp_path / "metadata.parquet"), f"{where}/textual_embeddings",
                                      EmbedSettings(tiny_clip, "", "cpu", 4))
        build_index(f"{where}/textual_embeddings", f"{where}/knn_indices/textual",
                    IndexSettings("1G", "2G", 10.0), str(tmp_path / "metadata.parquet"))
    assert counts[str(tmp_path / "local")] == counts[memory_url]
    embeddings = files_at(current_set(f"{memory_url}/textual_embeddings"))
    assert embeddings == local_files(str(tmp_path / "local" / "textual_embeddings"))
    assert len([name for name in embeddings if name.startswith("batches/")]) > 3
    searched = {where: open_index(f"{where}/knn_indices/textual") for where in (str(tmp_path / "local"), memory_url)}
    assert os.listdir(storage.cache_folder(f"{memory_url}/knn_indices/textual"))  # the query read a copy here
    local, remote = searched[str(tmp_path / "local")], searched[memory_url]
    assert np.array_equal(local.vectors, remote.vectors)
    assert local.items.column("id").equals(remote.items.column("id"))
    assert local.items.column("prompt").equals(remote.items.column("prompt"))


def test_a_killed_embedding_run_at_a_url_resumes_from_its_complete_batches(tmp_path, memory_url, tiny_clip,
                                                                           monkeypatch):
    from test_listing import variants, write_metadata

    from prompt_search.embedding import set_writer as embed

    write_metadata(tmp_path / "metadata.parquet", variants(random.Random(9), 30))
    saved, original = killed_after_batches(monkeypatch, 2)
    folder = f"{memory_url}/textual_embeddings"
    with pytest.raises(KeyboardInterrupt):
        embed_prompts(str(tmp_path / "metadata.parquet"), folder, EmbedSettings(tiny_clip, "", "cpu", 4))
    assert current_set(folder) is None
    unpublished = storage.glob(f"{memory_url}/.textual_embeddings.*")
    assert len(storage.glob(f"{unpublished[0]}/batches/*.json")) == 2
    monkeypatch.setattr(embed, "save_batch", original)
    written = []
    monkeypatch.setattr(embed, "save_batch", lambda *a, **k: (written.append(a[1]), original(*a, **k)))
    embed_prompts(str(tmp_path / "metadata.parquet"), folder, EmbedSettings(tiny_clip, "", "cpu", 4))
    assert saved == [0, 1] and written and 0 not in written and 1 not in written
    embed_prompts(str(tmp_path / "metadata.parquet"), str(tmp_path / "local"), EmbedSettings(tiny_clip, "", "cpu", 4))
    assert files_at(current_set(folder)) == local_files(str(tmp_path / "local"))


def test_an_index_set_at_a_url_from_embeddings_at_a_url(tmp_path, memory_url):
    fake_embeddings(tmp_path / "emb", [20, 15])
    fs = fsspec.filesystem("memory")
    with output_set(f"{memory_url}/emb") as folder:  # the embeddings set, uploaded as a step publishes it
        shutil.copytree(tmp_path / "emb", folder, dirs_exist_ok=True)
    build_index(f"{memory_url}/emb", f"{memory_url}/index", IndexSettings("1G", "2G", 10.0))
    build_index(str(tmp_path / "emb"), str(tmp_path / "index"), IndexSettings("1G", "2G", 10.0))
    remote = files_at(current_set(f"{memory_url}/index"))
    local = local_files(str(tmp_path / "index"))
    assert remote.keys() == local.keys() and remote["items.arrow"] == local["items.arrow"]
    assert remote["vectors.npy"] == local["vectors.npy"]
    assert fs.exists(storage.filesystem(f"{memory_url}/.index.1/{MARKER}")[1])


def test_a_missing_filesystem_is_said_in_one_line():
    with pytest.raises(UserError, match="nosuchfs://bucket/out: no filesystem for it"):
        storage.filesystem("nosuchfs://bucket/out")


def test_a_set_removed_while_it_is_copied_is_refused_not_half_read(memory_url):
    path = f"{memory_url}/set"
    with output_set(path) as folder:
        Path(folder, "value").write_text("1")
    found = published_set(path)
    withdraw_set(path)  # or two newer sets published: its folder goes, marker first
    with pytest.raises(UserError, match="was removed while it was read"):
        local_copy(path, found)
    assert not [p for p in Path(storage.cache_folder(path)).iterdir() if not p.name.startswith(".")]


def test_only_the_working_folders_of_killed_processes_are_removed(memory_url):
    path = f"{memory_url}/set"
    cache = Path(storage.cache_folder(path))
    cache.mkdir(parents=True)
    for name in (".build-killed", ".build-running"):
        (cache / name).mkdir()
        (cache / name / "rows.parquet").write_text("being written")
        (cache / f"{name}.lock").write_text("")
    with open(cache / ".build-running.lock") as running:
        fcntl.flock(running, fcntl.LOCK_EX)  # a build in progress in another process holds its lock
        with output_set(path) as folder:
            Path(folder, "value").write_text("1")
        assert not (cache / ".build-killed").exists() and (cache / ".build-running" / "rows.parquet").exists()


def test_a_withdrawal_cut_short_leaves_nothing_to_resume(memory_url, monkeypatch):
    path = f"{memory_url}/emb"
    with output_set(path) as folder:
        Path(folder, "batches").mkdir()
        Path(folder, "batches", "000000000.json").write_text("{}")
    monkeypatch.setattr(storage, "remove_tree", lambda folder, last="": (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        withdraw_set(path)
    monkeypatch.undo()
    assert current_set(path) is None and storage.glob(f"{memory_url}/.emb.*")  # its folder is still there
    folder = new_set(path, resume=True)  # a step that resumes starts afresh, not in the withdrawn set's remains
    assert not storage.glob(f"{folder}/batches/*") and storage.glob(f"{memory_url}/.emb.*") == []


def test_a_folder_url_holding_a_pattern_is_refused(memory_url):
    with pytest.raises(UserError, match=r"may not hold any of \[ \] \* \?"), output_set(f"{memory_url}/run[12]/set"):
        pass


def test_local_paths_are_found_behind_file_urls_and_caches():
    """The server resolves the links of these (a thumbnail must not leave its folder through one)."""
    assert storage.local_path("images/a.png") == "images/a.png"
    assert storage.local_path("file:///data/images/a.png") == "/data/images/a.png"
    assert storage.local_path("simplecache::file:///data/images/a.png") == "/data/images/a.png"
    assert storage.local_path("memory://images/a.png") is None
    assert storage.local_path("images/x::y.png") == "images/x::y.png"  # a local name may hold ::


def test_a_marker_that_holds_no_publication_id_is_refused(memory_url):
    path = f"{memory_url}/set"
    with output_set(path) as folder:
        Path(folder, "value").write_text("1")
    with storage.atomic_write(f"{memory_url}/.set.1/{MARKER}") as f:
        f.write(b"../../../etc")  # names this machine's copy of the set: never a path
    with pytest.raises(UserError, match="not a publication id"):
        local_set(path)


def test_a_key_that_climbs_out_of_its_folder_is_not_copied(memory_url, tmp_path):
    """Object stores allow keys holding ..: a copy of a set never writes outside its own folder."""
    fs, inner = storage.filesystem(memory_url)
    fs.pipe_file(f"{inner}/set/ok.txt", b"1")
    fs.store[f"{inner}/set/../../climbed.txt"] = fs.store[f"{inner}/set/ok.txt"]  # as S3 would list such a key
    (tmp_path / "copy").mkdir()
    with pytest.raises(UserError, match="would be copied outside"):
        storage.download_folder(f"{memory_url}/set", str(tmp_path / "copy"))
    assert not list(tmp_path.rglob("climbed.txt"))


def test_a_withdrawal_killed_while_removing_files_leaves_its_mark_to_the_last(memory_url, monkeypatch):
    """A folder half removed keeps its WITHDRAWN mark until nothing else of it is left: never resumed, whatever
    order the storage removes files in."""
    path = f"{memory_url}/emb"
    with output_set(path) as folder:
        for batch in range(3):
            Path(folder, "batches").mkdir(exist_ok=True)
            Path(folder, "batches", f"{batch:09d}.json").write_text("{}")
        Path(folder, "manifest.json").write_text("{}")
    fs, _ = storage.filesystem(memory_url)
    removals = []

    def rm(paths, recursive=False, **kwargs):
        removals.append(sorted(paths) if isinstance(paths, list) else [paths])
        if recursive:  # killed before the last removal: the folder and its mark
            raise KeyboardInterrupt
        return type(fs).rm(fs, paths, recursive=recursive, **kwargs)

    monkeypatch.setattr(fs, "rm", rm)
    with pytest.raises(KeyboardInterrupt):
        withdraw_set(path)
    monkeypatch.undo()
    assert files_at(f"{memory_url}/.emb.1") == {TOMBSTONE: b""}
    assert not any(p.endswith(TOMBSTONE) for p in removals[0])
    folder = new_set(path, resume=True)
    assert folder == f"{memory_url}/.emb.1" and not storage.exists(f"{folder}/{TOMBSTONE}")  # a fresh folder


def claim_record(**fields) -> bytes:
    """A claim object as a run on another machine writes it (claims.py), with fields replaced."""
    record = {"owner": "f" * 32, "host": "elsewhere", "pid": 4242, "since": "2026-01-01T00:00:00+00:00",
              "expires": time.time() + LEASE_S}
    return json.dumps({**record, **fields}).encode()


def test_a_set_claimed_at_a_url_by_a_running_run_is_refused_in_one_line(memory_url):
    path = f"{memory_url}/set"
    overwrite(f"{memory_url}/.set-claim", claim_record())
    held = r"another run \(pid 4242 on elsewhere, since 2026-01-01T00:00:00\+00:00\) is writing this set; run again"
    with pytest.raises(UserError, match=rf"^memory://.*/set: {held}"), output_set(path):
        pytest.fail("entered a set another run claims")
    assert current_set(path) is None and storage.exists(f"{memory_url}/.set-claim")  # its claim is left alone


def test_a_claim_a_killed_run_left_at_a_url_is_taken_over(memory_url):
    """Lapsed (not renewed for LEASE_S), or left by a process of this machine that has ended: a rerun takes it over,
    and its own claim and the takeover's mark go with it."""
    path = f"{memory_url}/set"
    for left in (claim_record(expires=time.time() - 1), claim_record(host=socket.gethostname(), pid=ended_pid())):
        overwrite(f"{memory_url}/.set-claim", left)
        with output_set(path) as folder:
            Path(folder, "value").write_text("resumed")
        assert Path(local_set(path), "value").read_text() == "resumed"
        assert not storage.glob(f"{memory_url}/.set-claim*")


def ended_pid() -> int:
    """The pid of a process of this machine that has ended."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_run_whose_claim_was_taken_over_publishes_nothing(memory_url):
    path = f"{memory_url}/set"
    with pytest.raises(UserError, match="claim on the set lapsed .* nothing was published"), output_set(path) as folder:
        Path(folder, "value").write_text("late")
        overwrite(f"{memory_url}/.set-claim", claim_record())  # its lease lapsed; another run took over
    assert current_set(path) is None


class EndpointConnectionError(Exception):
    """Stands for botocore's (not installed here), which s3fs lets through, not an OSError, when the endpoint cannot
    be reached."""

    __module__ = "botocore.exceptions"


REQUESTS = ("info", "ls", "find", "cat_file", "get_file", "put_file", "pipe_file", "_open", "rm", "rm_file", "mv",
            "makedirs")


def storage_fails(monkeypatch, url: str, error: Exception, after: str = "") -> None:
    """Every request of url's filesystem raises error, as s3fs raises S3's answers (PermissionError for wrong
    credentials, FileNotFoundError for a missing bucket); with after, from the first request of that name on (the
    endpoint goes away mid-step). Its isfile, isdir and exists are fsspec's generic ones, s3fs's isfile among them."""
    fs, _ = storage.filesystem(url)
    failing = [not after]

    def fault(name: str, *args) -> None:
        failing[0] = failing[0] or name == after
        if failing[0]:
            raise error

    for name in REQUESTS:
        monkeypatch.setattr(fs, name, intercepted(getattr(fs, name), partial(fault, name)))
    for name in ("isfile", "isdir", "exists"):
        monkeypatch.setattr(fs, name, partial(getattr(AbstractFileSystem, name), fs))


def intercepted(original: Callable, fault: Callable) -> Callable:
    """original, called after fault(*args), which raises the storage's error when it fails."""
    def call(*args, **kwargs):
        fault(*args)
        return original(*args, **kwargs)

    return call


def error_line(monkeypatch, script: str, *args: str) -> str:
    """Run a top-level script in this process (whose memory:// filesystem the test set up): what it exits with."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO / script), run_name="__main__")
    return str(exited.value.code)


@pytest.mark.parametrize(("failing", "error", "after", "said"), [
    ("csv", PermissionError("The AWS Access Key Id you provided does not exist in our records."), "",
     "{csv}: access denied: wrong credentials, or no permission for it (The AWS Access Key Id you provided does not "
     "exist in our records.)"),
    ("out", FileNotFoundError("The specified bucket does not exist"), "",
     "{out}/.metadata-claim: not found (The specified bucket does not exist)"),
    ("out", EndpointConnectionError('Could not connect to the endpoint URL: "http://127.0.0.1:9/bucket"'), "put_file",
     '{out}/.metadata.1: the storage cannot be reached (EndpointConnectionError: Could not connect to the endpoint '
     'URL: "http://127.0.0.1:9/bucket")'),
])
def test_storage_failures_are_one_line_naming_the_url_and_the_cause(tmp_path, memory_url, monkeypatch, capsys,
                                                                    failing, error, after, said):
    write_open_prompts_csv(tmp_path / "in.csv", [("a prompt", "http://127.0.0.1:9/0.png")])
    csv, out = f"{memory_url}/in.csv", f"{memory_url}/out"
    overwrite(csv, (tmp_path / "in.csv").read_bytes())
    storage_fails(monkeypatch, memory_url, error, after)
    args = [f"--CSV_FILE={csv}", f"--OUT_DIR={tmp_path / 'out'}"] if failing == "csv" else [
        f"--CSV_FILE={tmp_path / 'in.csv'}", f"--OUT_DIR={out}"]
    assert error_line(monkeypatch, "extract_img_links_from_csv.py", *args) == "error: " + said.format(csv=csv, out=out)
    assert capsys.readouterr().err == ""  # nothing but that line (the claim left behind is not a second error)


def test_a_step_that_published_says_so_and_ends_well_when_an_old_set_cannot_be_removed(memory_url, tmp_path,
                                                                                     monkeypatch, capsys):
    fake_embeddings(tmp_path / "emb", [20, 15])
    with output_set(f"{memory_url}/visual_embeddings") as folder:
        shutil.copytree(tmp_path / "emb", folder, dirs_exist_ok=True)
    for _ in range(2):
        create_index(memory_url, "visual", IndexSettings("1G", "2G", 10.0))
    fs, _ = storage.filesystem(memory_url)

    def refused(path, *args) -> None:
        if ".visual.1" in str(path):
            raise PermissionError("Access Denied")

    for name in ("rm", "rm_file"):
        monkeypatch.setattr(fs, name, intercepted(getattr(fs, name), refused))
    create_index(memory_url, "visual", IndexSettings("1G", "2G", 10.0))  # publishes .visual.3; .visual.1 should go
    assert current_set(f"{memory_url}/knn_indices/visual") == f"{memory_url}/knn_indices/.visual.3"
    printed = capsys.readouterr()
    assert "of 35 vectors of dimension 16" in printed.out  # step 4 says what it published
    assert (f"warning: {memory_url}/knn_indices/visual: published {memory_url}/knn_indices/.visual.3, but an older "
            f"set is left behind, removed by the next publish: {memory_url}/knn_indices/.visual.1/PUBLISHED: access "
            "denied") in printed.err
