"""Where the pipeline's files live: a local path, or a URL any fsspec filesystem opens (s3://, hdfs://, gs://,
file://, memory://), for OUT_DIR, IMG_DIR and CSV_FILE on storage that every machine of a cluster reaches.

Local paths go through os as they always did. A URL goes through fsspec; its filesystem's package is the
user's to install (s3fs for s3://, gcsfs for gs://, pyarrow's HDFS for hdfs://). What must be a local file
(a Parquet table DuckDB scans, an index faiss memory-maps, an ONNX model) is a copy in CACHE_DIR.
"""

import hashlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from glob import glob as local_glob
from typing import IO

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from prompt_search.errors import UserError
from prompt_search.storage_errors import reaching

# This machine's copies of what lives at URLs: output sets read (by publication), sets being built before their
# upload, the ONNX models and results.html of a remote OUT_DIR. PROMPT_SEARCH_CACHE moves it.
CACHE_DIR = os.path.expanduser(os.environ.get("PROMPT_SEARCH_CACHE", "~/.cache/prompt-search"))
GLOB_CHARACTERS = "[]*?"  # not allowed in a folder at a URL (no_pattern)
# the fields of fsspec's info() that change when a file is replaced, on the filesystems that report them
STAMP_KEYS = {"size", "mtime", "ETag", "LastModified", "last_modified", "md5Hash", "generation", "updated"}


def is_url(path: str) -> bool:
    """A location fsspec opens (protocol://...), not a local path."""
    return "://" in path


def is_http_url(url: object) -> bool:
    """An http(s) URL, its scheme in any case: schemes are case-insensitive (RFC 3986), so HTTP://x is http://x."""
    return type(url) is str and url[:8].lower().startswith(("http://", "https://"))


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of url and the path within it; a missing filesystem package said in one line.

    Its listings cache is emptied first: Spark tasks on other machines write into the folders this process lists
    (s3fs would otherwise answer from listings made before they wrote).
    """
    try:
        fs, inner = url_to_fs(url)
    except (ImportError, ValueError) as error:
        raise UserError(f"{url}: no filesystem for it ({error})") from None
    fs.invalidate_cache()
    return fs, inner


def no_pattern(url: str) -> str:
    """url itself, or a UserError when it holds a glob character: fsspec's listings, moves and removals take the
    whole path for a pattern, and would list or remove other folders (OUT_DIR=s3://b/run[12] names run1 and run2)."""
    if any(character in url for character in GLOB_CHARACTERS):
        raise UserError(f"{url}: a folder at a URL may not hold any of {' '.join(GLOB_CHARACTERS)} in its path")
    return url


def below(url: str, inner: str, path: str) -> str:
    """path, which fs found below inner (filesystem(url)'s path), as a URL that starts with url itself: fsspec's
    own unstrip_protocol loses an HDFS host and port, and writes memory://x as memory:///x."""
    root = inner.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        raise ValueError(f"{path} is not below {inner}")
    return url.rstrip("/") + path[len(root):]


def local_path(path: str) -> str | None:
    """The path on this machine of a local path or a file:// URL, cached (simplecache::file://...) or not; None
    for any other URL."""
    if not is_url(path):
        return path
    target = path.rsplit("::", 1)[-1]  # a chained URL's last part is where the files are
    if not is_url(target):
        return target
    fs, inner = filesystem(target)
    return inner if isinstance(fs, LocalFileSystem) else None


def _on(path: str, local: Callable, method: str, *args):
    """local(path, *args) for a local path; the method of path's fsspec filesystem, (inner path, *args), for a URL."""
    if not is_url(path):
        return local(path, *args)
    with reaching(path):
        fs, inner = filesystem(path)
        return getattr(fs, method)(inner, *args)


def _kind(path: str) -> str | None:
    """"file" or "directory" for what is at the URL path, None when nothing is. fsspec's own exists, isfile and
    isdir answer False for any error, so that wrong credentials read as "not found": here only a missing path
    does, and any other failure is a StorageError naming its cause."""
    with reaching(path):
        fs, inner = filesystem(path)
        try:
            return fs.info(inner)["type"]
        except FileNotFoundError:
            return None


def exists(path: str) -> bool:
    return os.path.exists(path) if not is_url(path) else _kind(path) is not None


def is_dir(path: str) -> bool:
    return os.path.isdir(path) if not is_url(path) else _kind(path) == "directory"


def is_file(path: str) -> bool:
    return os.path.isfile(path) if not is_url(path) else _kind(path) == "file"


def open_file(path: str, mode: str = "rb") -> IO:
    return _on(path, open, "open", mode)


def size(path: str) -> int:
    return _on(path, os.path.getsize, "size")


def remove_file(path: str) -> None:
    _on(path, os.remove, "rm_file")


def glob(pattern: str) -> list[str]:
    """The paths matching pattern (wildcards in its last part only), sorted; URLs stay URLs."""
    if not is_url(pattern):
        return sorted(local_glob(pattern))
    folder, name = pattern.rsplit("/", 1)
    with reaching(folder):
        fs, inner = filesystem(no_pattern(folder))
        return sorted(below(folder, inner, path) for path in fs.glob(f"{inner.rstrip('/')}/{name}"))


def walk(folder: str, onerror: Callable[[OSError], None] | None = None) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk of folder, local or at a URL (whose roots are then URLs that start with folder); onerror(error) for
    each folder that cannot be listed, which is left out either way."""
    if not is_url(folder):
        yield from os.walk(folder, onerror=onerror)
        return
    with reaching(folder):
        fs, inner = filesystem(no_pattern(folder))
        for root, dirs, files in fs.walk(inner, on_error=onerror or "omit"):
            yield below(folder, inner, root), dirs, files


def read_bytes(path: str) -> bytes:
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    with reaching(path):
        fs, inner = filesystem(path)
        return fs.cat_file(inner)


def stamp(path: str) -> str:
    """What changes when the file at path is replaced: its size and modification time, or at a URL what its
    storage reports of the kind (ETag, mtime, LastModified...)."""
    if not is_url(path):
        info = os.stat(path)
        return f"{info.st_size}:{info.st_mtime_ns}"
    with reaching(path):
        fs, inner = filesystem(path)
        info = fs.info(inner)
    return ":".join(str(info[key]) for key in sorted(info) if key in STAMP_KEYS)


def remove_tree(path: str, last: str = "") -> None:
    """Remove a folder and everything below it; nothing when there is none. last: a file of the folder removed
    after all the rest (a mark that must stay while anything else of the folder does)."""
    if not is_url(path):
        if last and os.path.isdir(path):
            for entry in os.scandir(path):
                if entry.name != last:
                    shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.remove(entry.path)
        shutil.rmtree(path, ignore_errors=True)
        return
    with reaching(path):
        fs, inner = filesystem(no_pattern(path))
        try:
            fs.info(inner)
        except FileNotFoundError:
            return
        others = [found for found in fs.find(inner) if found != f"{inner.rstrip('/')}/{last}"] if last else []
        if others:
            fs.rm(others)
        fs.rm(inner, recursive=True)


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary local path beside `path`; it replaces `path` only if the block succeeds."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.partial"
    try:
        yield tmp
        swap_point()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO]:
    """A file to write path's content into (a local path or a URL): path never holds part of it. Written as
    path.partial and moved onto path when the block succeeds: in one step on a local disk and on object stores
    (which make an object visible only whole); HDFS deletes an existing path before the move, so there path may be
    missing for a moment (the sets never replace an object: see output_sets.py)."""
    if not is_url(path):
        with atomic_path(path) as tmp, open(tmp, mode) as f:
            yield f
        return
    with reaching(path):
        fs, inner = filesystem(no_pattern(path))
        fs.makedirs(fs._parent(inner), exist_ok=True)  # a local file:// folder must exist; object stores have none
        tmp = f"{inner}.partial"
        try:
            with fs.open(tmp, mode) as f:
                yield f
            swap_point()
            fs.mv(tmp, inner)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)


_swaps_reached = 0


def swap_point() -> None:
    """Called before every replace that publishes an output. Fault injection for the tests, at this process's Nth
    swap point: PROMPT_SEARCH_KILL_AT_SWAP=N kills it, as SIGKILL would; PROMPT_SEARCH_STOP_AT_SWAP=N stops it
    (SIGSTOP) until it is sent SIGCONT, so that a test runs another writer meanwhile."""
    global _swaps_reached
    _swaps_reached += 1
    if os.environ.get("PROMPT_SEARCH_KILL_AT_SWAP") == str(_swaps_reached):
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("PROMPT_SEARCH_STOP_AT_SWAP") == str(_swaps_reached):
        os.kill(os.getpid(), signal.SIGSTOP)


def cache_folder(url: str) -> str:
    """This machine's folder for copies of what lives at url (one per URL)."""
    return os.path.join(CACHE_DIR, hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:24])


def download_folder(url: str, local: str) -> None:
    """Copy the folder at url, everything below it, into the local folder local."""
    with reaching(url):
        fs, inner = filesystem(url)
        for path in fs.find(inner):
            _download_file(fs, url, inner, path, local)


def _download_file(fs: AbstractFileSystem, url: str, inner: str, path: str, local: str) -> None:
    """Copy the file path, found below inner (url's path), to the same place below the local folder."""
    target = os.path.normpath(os.path.join(local, os.path.relpath(path, inner)))
    if os.path.commonpath([target, os.path.normpath(local)]) != os.path.normpath(local):  # a key holding ..
        raise UserError(f"{url}: {path} would be copied outside {local}; not copied")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fs.get_file(path, target)


def upload_folder(local: str, url: str) -> None:
    """Copy every file below the local folder into the folder at url."""
    if not os.path.isdir(local):  # os.walk would copy nothing, and an empty set be published
        raise FileNotFoundError(local)
    with reaching(url):
        fs, inner = filesystem(url)
        for parent, _, names in os.walk(local):
            target = f"{inner.rstrip('/')}/{os.path.relpath(parent, local).replace(os.sep, '/')}".removesuffix("/.")
            fs.makedirs(target, exist_ok=True)  # a local file:// folder must exist; object stores have none
            for name in names:
                fs.put_file(os.path.join(parent, name), f"{target}/{name}")


@contextmanager
def local_file(path: str) -> Iterator[str]:
    """path itself when local; else a local copy of the file at that URL, removed after the block."""
    if not is_url(path):
        yield path
        return
    if not is_file(path):  # a StorageError when the storage fails: wrong credentials are not "not found"
        raise UserError(f"{path} not found")
    os.makedirs(CACHE_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as folder:
        copy = os.path.join(folder, os.path.basename(path))
        with reaching(path):
            fs, inner = filesystem(path)
            fs.get_file(inner, copy)
        yield copy


def local_dir(out_dir: str) -> str:
    """Where files that must stay on this machine (ONNX models, results.html) go: out_dir itself when local."""
    return cache_folder(out_dir) if is_url(out_dir) else out_dir
