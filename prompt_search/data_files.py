"""The known data files fetched on first use, and what identifies a model's weights."""

import hashlib
import os
import shutil
import urllib.error
import urllib.request

from prompt_search.cli import UserError
from prompt_search.storage import atomic_path


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
    from prompt_search.models.clip import OPEN_CLIP, split_open_clip  # lazily: it imports images -> links -> files

    found = split_open_clip(model)
    if found:
        return OPEN_CLIP + "/".join(map(model_fingerprint, found))
    if os.path.isfile(model):
        stat = os.stat(model)
        return f"{os.path.abspath(model)}:{stat.st_size}:{stat.st_mtime_ns}"
    return model
