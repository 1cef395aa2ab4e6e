"""What storage at a URL answers when it fails (no bucket, wrong credentials, the endpoint gone), said in one line
that names the URL and the cause, instead of the 70 to 150 lines of a filesystem package's traceback."""

import re
from collections.abc import Iterator
from contextlib import contextmanager

from prompt_search.errors import UserError

# Packages whose own exceptions are storage failures too: s3fs lets botocore's EndpointConnectionError (not an
# OSError) through when the endpoint cannot be reached, and aiohttp's and Google's clients raise their own.
CLIENT_PACKAGES = {"botocore", "aiobotocore", "aiohttp", "google", "gcsfs"}
MESSAGE_CHARACTERS = 300  # of the storage's own message, kept on the line


class StorageError(UserError):
    """Storage at a URL failed; the message names the URL and the cause."""


def is_storage_failure(error: BaseException) -> bool:
    """An error the storage answered (fsspec's filesystems turn most into OSError), not a bug of this program."""
    return isinstance(error, OSError) or type(error).__module__.split(".")[0] in CLIENT_PACKAGES


def cause(error: BaseException) -> str:
    """What went wrong, in words a user acts on, then the storage's own message (s3fs gives S3's)."""
    message = re.sub(r"\s+", " ", str(error)).strip()[:MESSAGE_CHARACTERS] or type(error).__name__
    if isinstance(error, FileNotFoundError):
        return f"not found ({message})"
    if isinstance(error, PermissionError):
        return f"access denied: wrong credentials, or no permission for it ({message})"
    if isinstance(error, (ConnectionError, TimeoutError)) or "Connect" in type(error).__name__:
        return f"the storage cannot be reached ({type(error).__name__}: {message})"
    return f"{type(error).__name__}: {message}"


@contextmanager
def reaching(url: str) -> Iterator[None]:
    """Turn a storage failure in the block, which works on url, into a StorageError naming url and the cause."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        if not is_storage_failure(error):
            raise
        raise StorageError(f"{url}: {cause(error)}") from None
