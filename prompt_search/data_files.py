"""The known data files fetched on first use, and what identifies a model's weights."""

import hashlib
import os
import shutil
import urllib.error
import urllib.request

from prompt_search.errors import UserError
from prompt_search.storage import atomic_path, is_http_url


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_data_file(path: str, url: str, sha256: str) -> None:
    """Make sure `path` exists: when it does not, download it from `url`, checking its sha256."""
    if os.path.exists(path):
        return
    with atomic_path(path) as tmp:
        _download(url, tmp, path)
        check_sha256(tmp, sha256, url, path)
    print(f"{path}: fetched from {url}")


def check_sha256(tmp: str, sha256: str, source: str, path: str) -> None:
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
