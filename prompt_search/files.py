"""Atomic writes, and the known data files fetched on first use."""

import hashlib
import os
import shutil
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
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_http_url(url: object) -> bool:
    """An http(s) URL, its scheme in any case: schemes are case-insensitive (RFC 3986), so HTTP://x is http://x."""
    return type(url) is str and url[:8].lower().startswith(("http://", "https://"))


def ensure_data_file(path: str, url: str, sha256: str, local_dir: str) -> None:
    """Make sure `path` exists: copy it from `local_dir` or download it from `url`, checking its sha256."""
    if os.path.exists(path):
        return
    local_copy = os.path.join(local_dir, os.path.basename(path))
    with atomic_path(path) as tmp:
        if os.path.isfile(local_copy):
            shutil.copyfile(local_copy, tmp)
            source = local_copy
        else:
            _download(url, tmp, path)
            source = url
        if sha256_of(tmp) != sha256:
            raise UserError(f"{source} does not have the expected sha256 {sha256}; {path} was not written")
    print(f"{path}: fetched from {source}")


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
    """What identifies a model's weights: its name, or its checkpoint's path, size and mtime."""
    if os.path.isfile(model):
        stat = os.stat(model)
        return f"{os.path.abspath(model)}:{stat.st_size}:{stat.st_mtime_ns}"
    return model
