"""Output sets published as one, and the known data files fetched on first use.

An output set is every file one step writes, published together. Its folders are `.NAME.N` beside `path`
(OUT_DIR/knn_indices/visual, say). A step writes its new set into the next `.NAME.N`, then publishes it in one
atomic step: at a local path, `path` is a symbolic link to the folder, swapped by a rename; at a URL (storage.py:
S3, HDFS... have no links), `path` is a small object naming the folder and the publication, replaced whole.
A reader resolves `path` once (`current_set`) and reads every file from that folder, so it sees the old complete
set or the new one, never a mix, whenever the writer is killed. The set before stays until the next publish, for
a reader that resolved `path` just before.

At a URL, a step that reads local files (DuckDB, faiss, memory maps) reads this machine's copy of the published
set (`local_set`, kept by publication); a step that writes its whole set on one machine builds it in a local
folder and uploads it before publishing (`output_set`); step 3 writes its batches at the URL itself, from any
machine (`output_set(resume=True)`, embed.py).
"""

import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from prompt_search import storage
from prompt_search.cli import UserError
from prompt_search.storage import atomic_path, is_url, swap_point


def current_set(path: str) -> str | None:
    """The folder of the output set published at path, resolved once; None when there is none."""
    if is_url(path):
        pointer = _pointer(path)
        return None if pointer is None else os.path.join(os.path.dirname(path.rstrip("/")), pointer[0])
    folder = os.path.realpath(path)
    return folder if os.path.isdir(folder) else None


def local_set(path: str) -> str | None:
    """current_set(path) as a local folder: at a URL, this machine's copy of the published set, downloaded when
    first read (the copy before is kept for a reader still on it; older ones are removed)."""
    if not is_url(path):
        return current_set(path)
    pointer = _pointer(path)
    if pointer is None:
        return None
    cache = storage.cache_folder(path)
    copy = os.path.join(cache, pointer[1])
    if not os.path.isdir(copy):
        os.makedirs(cache, exist_ok=True)
        storage.download_folder(os.path.join(os.path.dirname(path.rstrip("/")), pointer[0]), copy)
        others = sorted((os.path.getmtime(p), p) for p in (os.path.join(cache, n) for n in os.listdir(cache))
                        if p != copy and not os.path.basename(p).startswith("."))
        for _, old in others[:-1]:
            shutil.rmtree(old, ignore_errors=True)
    return copy


def published_file(path: str) -> str:
    """A file of an output set (OUT_DIR/metadata/metadata.parquet, say) in the set published now, where it stays
    whatever is published next; path itself when no set is published."""
    parent, name = os.path.split(path)
    folder = current_set(parent)
    return os.path.join(folder, name) if folder else path


def local_published_file(path: str) -> str:
    """published_file(path) as a local file: at a URL, in this machine's copy of the set (local_set)."""
    parent, name = os.path.split(path)
    folder = local_set(parent)
    return os.path.join(folder, name) if folder else path


@contextmanager
def output_set(path: str, resume: bool = False) -> Iterator[str]:
    """Yield the folder to write path's next set into (new_set); publish it if the block succeeds.

    A block that fails leaves the published set as it was; its folder is removed, unless resume.
    At a URL the folder is a local one, uploaded before publishing; unless resume, where the block writes at the
    URL itself (for writers on other machines, and a rerun that resumes what a killed one wrote).
    """
    if is_url(path) and not resume:
        os.makedirs(storage.CACHE_DIR, exist_ok=True)
        local = tempfile.mkdtemp(prefix=".build-", dir=storage.CACHE_DIR)
        try:
            yield local
            folder = new_set(path)
            storage.upload_folder(local, folder)
            publish_set(path, folder)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        return
    folder = new_set(path, resume)
    try:
        yield folder
    except BaseException:
        if not resume:
            storage.remove_tree(folder)
        raise
    publish_set(path, folder)


def new_set(path: str, resume: bool = False) -> str:
    """The folder a step writes its next set for path into, `.NAME.N` beside it.

    resume: the unpublished folder a killed run left, when there is one (a step that resumes);
    otherwise a new, empty folder, and unpublished ones are removed.
    """
    current = _generation(current_set(path) or "")
    generations = sorted((_generation(folder), folder) for folder in storage.glob(_set_folder(path, "*")))
    unpublished = [folder for number, folder in generations if number > current]
    if resume and unpublished:
        return unpublished[-1]
    for folder in unpublished:
        storage.remove_tree(folder)
    folder = _set_folder(path, str(max(current, 0) + 1))
    if not is_url(path):
        os.makedirs(folder)
    return folder


def publish_set(path: str, folder: str) -> None:
    """Publish the finished set in folder (from new_set) at path in one atomic swap.

    The set before stays until the next publish, for a reader that resolved path just before the swap.
    """
    keep = {os.path.basename(current_set(path) or ""), os.path.basename(folder)}
    if is_url(path):
        with storage.atomic_write(path) as f:  # the folder's name, and this publication's, for local_set's copies
            f.write(f"{os.path.basename(folder)} {uuid.uuid4().hex}".encode())
    else:
        link = f"{path}.link.partial"
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.basename(folder), link)
        if os.path.isdir(path) and not os.path.islink(path):  # a real folder from an older version: set it aside
            os.rename(path, _set_folder(path, "0"))
        swap_point()
        os.replace(link, path)
    swap_point()
    for old in storage.glob(_set_folder(path, "*")):
        if os.path.basename(old.rstrip("/")) not in keep:
            storage.remove_tree(old)


def withdraw_set(path: str) -> bool:
    """Unpublish the set at path (one atomic removal of its link) and remove its folders; whether there was one."""
    if is_url(path):
        published = _pointer(path) is not None
        if published:
            fs, inner = storage.filesystem(path)
            fs.rm(inner)
    else:
        published = os.path.islink(path)
        if published:
            os.remove(path)
    for folder in storage.glob(_set_folder(path, "*")):
        storage.remove_tree(folder)
    return published


def _pointer(path: str) -> tuple[str, str] | None:
    """(set folder's name, publication id) that the object at the URL path holds; None when there is none."""
    if not storage.is_file(path):
        return None
    name, publication = storage.read_bytes(path).decode().split()
    return name, publication


def _generation(folder: str) -> int:
    """N of a set folder .NAME.N; -1 for anything else."""
    match = re.search(r"\.(\d+)$", folder)
    return int(match.group(1)) if match else -1


def _set_folder(path: str, suffix: str) -> str:
    parent, name = os.path.split(path.rstrip("/") if is_url(path) else os.path.normpath(path))
    return os.path.join(parent, f".{name}.{suffix}")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_http_url(url: object) -> bool:
    """An http(s) URL, its scheme in any case: schemes are case-insensitive (RFC 3986), so HTTP://x is http://x."""
    return type(url) is str and url[:8].lower().startswith(("http://", "https://"))


def ensure_data_file(path: str, url: str, sha256: str) -> None:
    """Make sure `path` exists: when it does not, download it from `url`, checking its sha256."""
    if os.path.exists(path):
        return
    with atomic_path(path) as tmp:
        _download(url, tmp, path)
        _check_sha256(tmp, sha256, url, path)
    print(f"{path}: fetched from {url}")


# Tests and benchmarks find the real data files (1k.csv, prompt-search.png) in the folder this variable names;
# the pipeline itself downloads them.
DATA_VARIABLE = "PROMPT_SEARCH_DATA"


class MissingDataFile(UserError):
    """$PROMPT_SEARCH_DATA is unset or its folder lacks the file: tests skip, benchmarks stop."""


def data_file_from_env(name: str, sha256: str, dest_dir: str) -> str:
    """The file `name` of the folder $PROMPT_SEARCH_DATA, copied into dest_dir and checked against its sha256 (a
    UserError if it differs; MissingDataFile if there is no such file)."""
    folder = os.environ.get(DATA_VARIABLE)
    source = os.path.join(folder, name) if folder else ""
    if not os.path.isfile(source):
        where = f"{DATA_VARIABLE}={folder} has no {name}" if folder else f"{DATA_VARIABLE} is not set"
        raise MissingDataFile(f"real {name} not available ({where}): set {DATA_VARIABLE} to a folder holding it")
    path = os.path.join(dest_dir, name)
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
        _check_sha256(tmp, sha256, source, path)
    return path


def _check_sha256(tmp: str, sha256: str, source: str, path: str) -> None:
    if sha256_of(tmp) != sha256:
        raise UserError(f"{source} does not have the expected sha256 {sha256}; {path} was not written")


def _download(url: str, tmp: str, path: str) -> None:
    if not is_http_url(url):
        raise UserError(f"refusing to download {url!r}: only http(s) URLs are fetched")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f)
    except (urllib.error.URLError, OSError) as error:
        raise UserError(
            f"{path} is missing and could not be downloaded from {url} ({error}). "
            f"Download that file by hand and put it at {path}"
        ) from None


def model_fingerprint(model: str) -> str:
    """What identifies a model's weights: its name, or its checkpoint's path, size and mtime; for an OpenCLIP
    model, open_clip: and the same of its architecture (name or config file) and pretrained tag (or checkpoint)."""
    from prompt_search.clip_models import OPEN_CLIP, split_open_clip  # lazily: it imports images -> links -> files

    found = split_open_clip(model)
    if found:
        return OPEN_CLIP + "/".join(map(model_fingerprint, found))
    if os.path.isfile(model):
        stat = os.stat(model)
        return f"{os.path.abspath(model)}:{stat.st_size}:{stat.st_mtime_ns}"
    return model
