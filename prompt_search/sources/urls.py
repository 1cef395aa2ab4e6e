"""The id of a row: a digest of its image's URL, stable whatever the row order."""

import hashlib


def url_digest(url: str) -> bytes:
    """blake2b of the URL with an 8-byte digest: the row's id (as hex) and its key among the kept URLs."""
    return hashlib.blake2b(url.encode(), digest_size=8).digest()


def url_id(url: str) -> str:
    """The id step 1 gives the row of this URL; lets images downloaded from img_links.txt find their row."""
    return url_digest(url).hex()
