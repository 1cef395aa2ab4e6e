"""This machine's folders for what lives at URLs (storage.cache_folder): working folders a process builds or
downloads a set into, and the copies of published sets (sets.local_copy), kept by publication."""

import fcntl
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def working_folder(cache: str, prefix: str) -> Iterator[str]:
    """A new folder in cache for this process to build or download into, removed after the block. Its lock
    (an flock on FOLDER.lock) is held until then: a folder whose lock nobody holds was left by a killed process,
    and the next one removes it."""
    os.makedirs(cache, exist_ok=True)
    _remove_abandoned(cache)
    while True:
        folder = tempfile.mkdtemp(prefix=prefix, dir=cache)
        lock = open(f"{folder}.lock", "w")  # noqa: SIM115 (held open for the whole block)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:  # another process may have taken the lock, free before we held it, for a killed one's and removed both
            if os.path.isdir(folder) and os.stat(f"{folder}.lock").st_ino == os.fstat(lock.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        lock.close()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.remove(f"{folder}.lock")
        lock.close()


def _remove_abandoned(cache: str) -> None:
    """Remove the working folders of killed processes (their lock free) and copies whose removal was cut short."""
    for entry in os.scandir(cache):
        if entry.name.startswith(".removing-"):
            shutil.rmtree(entry.path, ignore_errors=True)
        elif entry.name.endswith(".lock"):
            try:
                with open(entry.path) as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    shutil.rmtree(entry.path.removesuffix(".lock"), ignore_errors=True)
                    os.remove(entry.path)
            except (BlockingIOError, FileNotFoundError):  # in use, or removed by its owner meanwhile
                continue


def remove_old_copies(cache: str, keep: str) -> None:
    """Every copy in cache but keep and the newest other one (a reader may still be on it)."""
    copies = []
    for entry in os.scandir(cache):
        try:
            if not entry.name.startswith(".") and entry.path != keep:
                copies.append((entry.stat().st_mtime, entry.path))
        except FileNotFoundError:
            continue
    for _, old in sorted(copies)[:-1]:
        doomed = os.path.join(cache, f".removing-{uuid.uuid4().hex}")
        try:
            os.rename(old, doomed)  # renamed first: a removal cut short must not leave a copy that passes for whole
        except FileNotFoundError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
