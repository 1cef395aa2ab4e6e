"""Atomic writes, output sets published as one, and the known data files fetched on first use.

An output set is every file one step writes, published together. `path` (OUT_DIR/knn_indices/visual,
say) is a symbolic link to the folder of the current set, `.NAME.N` beside it. A step writes its new
set into the next `.NAME.N`, then swaps the link in one atomic rename.
A reader resolves the link once (`current_set`) and reads every file from that folder, so it sees the
old complete set or the new one, never a mix, whenever the writer is killed.
"""

import glob
import hashlib
import os
import re
import shutil
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from prompt_search.cli import UserError


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.partial"
    try:
        yield tmp
        swap_point()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_swaps_reached = 0


def swap_point() -> None:
    """Called before every replace that publishes an output. Fault injection for the tests:
    PROMPT_SEARCH_KILL_AT_SWAP=N kills this process, as SIGKILL would, at its Nth swap point."""
    global _swaps_reached
    _swaps_reached += 1
    if os.environ.get("PROMPT_SEARCH_KILL_AT_SWAP") == str(_swaps_reached):
        os.kill(os.getpid(), signal.SIGKILL)


def current_set(path: str) -> str | None:
    """The folder of the output set published at path, resolved once; None when there is none."""
    folder = os.path.realpath(path)
    return folder if os.path.isdir(folder) else None


@contextmanager
def output_set(path: str, resume: bool = False) -> Iterator[str]:
    """Yield the folder to write path's next set into (new_set); publish it if the block succeeds.

    A block that fails leaves the published set as it was; its folder is removed, unless resume.
    """
    folder = new_set(path, resume)
    try:
        yield folder
    except BaseException:
        if not resume:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    publish_set(path, folder)


def new_set(path: str, resume: bool = False) -> str:
    """The folder a step writes its next set for path into, `.NAME.N` beside it.

    resume: the unpublished folder a killed run left, when there is one (a step that resumes);
    otherwise a new, empty folder, and unpublished ones are removed.
    """
    current = _generation(os.path.realpath(path))
    generations = sorted((_generation(folder), folder) for folder in glob.glob(_set_folder(path, "*")))
    unpublished = [folder for number, folder in generations if number > current]
    if resume and unpublished:
        return unpublished[-1]
    for folder in unpublished:
        shutil.rmtree(folder)
    folder = _set_folder(path, str(max(current, 0) + 1))
    os.makedirs(folder)
    return folder


def publish_set(path: str, folder: str) -> None:
    """Publish the finished set in folder (from new_set) at path in one atomic swap.

    The set before stays until the next publish, for a reader that resolved path just before the swap.
    """
    link = f"{path}.link.partial"
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.basename(folder), link)
    if os.path.isdir(path) and not os.path.islink(path):  # a real folder from an older version: set it aside
        os.rename(path, _set_folder(path, "0"))
    keep = {os.path.realpath(path), os.path.realpath(folder)}
    swap_point()
    os.replace(link, path)
    swap_point()
    for old in glob.glob(_set_folder(path, "*")):
        if os.path.realpath(old) not in keep:
            shutil.rmtree(old)


def withdraw_set(path: str) -> bool:
    """Unpublish the set at path (one atomic removal of its link) and remove its folders; whether there was one."""
    published = os.path.islink(path)
    if published:
        os.remove(path)
    for folder in glob.glob(_set_folder(path, "*")):
        shutil.rmtree(folder)
    return published


def _generation(folder: str) -> int:
    """N of a set folder .NAME.N; -1 for anything else."""
    match = re.search(r"\.(\d+)$", folder)
    return int(match.group(1)) if match else -1


def _set_folder(path: str, suffix: str) -> str:
    parent, name = os.path.split(os.path.normpath(path))
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
