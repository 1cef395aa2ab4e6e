"""Output sets: every file one step writes, published together, so that a reader sees the old complete set or
the new one, never a mix, whenever the writer is killed.

A set's folders are `.NAME.N` beside its path (OUT_DIR/knn_indices/visual, say). A step writes its next set into
the next `.NAME.N`, then publishes it in one atomic step:
  - at a local path, `path` is a symbolic link to the folder, swapped by a rename;
  - at a URL (storage.py: object stores have neither links nor an atomic replace, and HDFS replaces a file by
    deleting it first), the set is published when its marker `.NAME.N/PUBLISHED` is written, last; the current
    set is the highest N with a marker. No published object is ever overwritten.
A reader resolves the set once (`published_set`) and reads every file from that folder. The set before stays until
the next publish, for a reader that resolved the path just before. A set has one writer at a time: `output_set`
claims it (claims.py) before anything of it is written, and a second run is refused.

At a URL, a step that reads local files (DuckDB, faiss, memory maps) reads this machine's copy of the published
set, kept in storage.CACHE_DIR by publication (`local_copy`); a step that writes its whole set on one machine
builds it in a local folder and uploads it before publishing (`output_set`); step 3 writes its batches at the URL
itself, from any machine (`output_set(resume=True)`, embedding/set_writer.py).
"""

import os
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from prompt_search import storage
from prompt_search.cache_folders import remove_old_copies, working_folder
from prompt_search.claims import Claim, claimed
from prompt_search.errors import UserError
from prompt_search.storage import is_url, swap_point
from prompt_search.storage_errors import StorageError

MARKER = "PUBLISHED"  # at a URL, written into a set's folder last: the set is published (holds the publication id)
TOMBSTONE = "WITHDRAWN"  # written into each folder of a set being withdrawn: never resumed, even if the removal stops


@dataclass(frozen=True)
class Published:
    folder: str  # the set's folder: a local path, or a URL
    publication: str  # tells publications apart (numbers restart after a withdrawal): the marker's id at a URL


def published_set(path: str) -> Published | None:
    """The output set published at path, resolved once; None when there is none."""
    if not is_url(path):
        folder = os.path.realpath(path)
        return Published(folder, folder) if os.path.isdir(folder) else None
    for _, folder in reversed(_set_folders(path)):
        publication = _publication(folder)
        if publication:
            return Published(folder, publication)
    return None


def current_set(path: str) -> str | None:
    """The folder of the output set published at path; None when there is none."""
    found = published_set(path)
    return found.folder if found else None


def local_copy(path: str, found: Published) -> str:
    """The published set found (published_set(path)) as a local folder: at a URL, this machine's copy, downloaded
    when first read; the copy before is kept for a reader still on it, older ones are removed."""
    if not is_url(path):
        return found.folder
    cache = storage.cache_folder(path)
    copy = os.path.join(cache, found.publication)
    if not os.path.isdir(copy):
        with working_folder(cache, ".download-") as download:
            storage.download_folder(found.folder, download)
            # A set is removed marker first: with its marker still there, nothing of it was removed while it was read.
            if _publication(found.folder) != found.publication:
                raise UserError(f"{path}: the set {found.folder} was removed while it was read (two newer sets were "
                                "published, or it was withdrawn): run again")
            try:
                os.replace(download, copy)
            except OSError:  # another process copied the same set meanwhile: keep its copy
                if not os.path.isdir(copy):
                    raise
        remove_old_copies(cache, copy)
    return copy


def local_set(path: str) -> str | None:
    """The folder of the set published at path, as a local folder (local_copy); None when there is none."""
    found = published_set(path)
    return None if found is None else local_copy(path, found)


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

    The set is claimed for the whole block (claims.py): a second run writing the same set meanwhile is refused.
    A block that fails leaves the published set as it was; its folder is removed, unless resume.
    At a URL the folder is a local one, uploaded before publishing; unless resume, where the block writes at the
    URL itself (for writers on other machines, and a rerun that resumes what a killed one wrote).
    """
    with claim_set(path) as claim:
        if is_url(path) and not resume:
            with working_folder(storage.cache_folder(path), ".build-") as local:
                yield local
                folder = new_set(path)
                storage.upload_folder(local, folder)
                claim.check()
                publish_set(path, folder)
            return
        folder = new_set(path, resume)
        try:
            yield folder
        except BaseException:
            if not resume:
                storage.remove_tree(folder)
            raise
        claim.check()
        publish_set(path, folder)


def claim_set(path: str) -> AbstractContextManager[Claim]:
    """Hold the claim on the set at path (claims.py): its one writer, until the block ends."""
    return claimed(beside_set(path, "-claim"), path)


def new_set(path: str, resume: bool = False) -> str:
    """The folder a step writes its next set for path into, `.NAME.N` beside it; called by the holder of the set's
    claim (output_set), the only one to pick a number.

    resume: the unpublished folder a killed run left, when there is one (a step that resumes);
    otherwise a new, empty folder, and unpublished ones are removed.
    """
    if is_url(path):
        found = published_set(path)
        current = _generation(found.folder) if found else -1
    else:  # the link's target even when it dangles: its folder's number is still taken
        current = _generation(os.path.realpath(path))
    unpublished = [folder for number, folder in _set_folders(path) if number > current]
    if resume and unpublished and not storage.exists(f"{unpublished[-1]}/{TOMBSTONE}"):
        return unpublished[-1]
    for folder in unpublished:
        storage.remove_tree(folder)
    folder = _set_folder(path, str(max(current, 0) + 1))
    if not is_url(path):
        os.makedirs(folder)
    return folder


def publish_set(path: str, folder: str) -> None:
    """Publish the finished set in folder (from new_set) at path in one atomic step.

    The set before stays until the next publish, for a reader that resolved path just before. Once the set is
    published, a failure to remove an older one is a warning: the next publish removes it.
    """
    before = published_set(path)
    keep = {os.path.basename(before.folder) if before else "", os.path.basename(folder)}
    if is_url(path):
        with storage.atomic_write(f"{folder}/{MARKER}") as f:  # a new object: no storage replaces anything here
            f.write(uuid.uuid4().hex.encode())
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
            try:
                _remove_set_folder(old)
            except (StorageError, OSError) as error:
                print(f"warning: {path}: published {folder}, but an older set is left behind, removed by the next "
                      f"publish: {error}", file=sys.stderr)


def withdraw_set(path: str) -> bool:
    """Unpublish the set at path (one atomic removal of its link, or of its markers oldest first: a withdrawal
    killed midway leaves the newest set published, never an older one) and remove its folders; whether there
    was one. Each folder is marked withdrawn first, and that mark is removed last, so that a withdrawal cut short
    leaves nothing a step resumes."""
    if not storage.glob(_set_folder(path, "*")) and (is_url(path) or not os.path.lexists(path)):
        return False  # nothing to withdraw: no claim taken, no folder made for one
    with claim_set(path):
        return _withdraw(path)


def _withdraw(path: str) -> bool:
    for old in storage.glob(_set_folder(path, "*")):
        with storage.atomic_write(f"{old.rstrip('/')}/{TOMBSTONE}") as f:
            f.write(b"")
    if is_url(path):
        published = published_set(path) is not None
        for _, folder in _set_folders(path):
            _remove_marker(folder)
    else:
        published = os.path.islink(path)
        if published:
            os.remove(path)
    for old in storage.glob(_set_folder(path, "*")):
        storage.remove_tree(old, last=TOMBSTONE)
    return published


def _publication(folder: str) -> str | None:
    """The publication id in a set folder's marker (at a URL); None when it has no marker."""
    marker = f"{folder}/{MARKER}"
    if not storage.is_file(marker):
        return None
    publication = storage.read_bytes(marker).decode(errors="replace").strip()
    if not re.fullmatch(r"[0-9a-f]{32}", publication):  # it names this machine's copy: never a path
        raise UserError(f"{marker} holds {publication[:40]!r}, not a publication id: remove that object")
    return publication


def _remove_marker(folder: str) -> None:
    if storage.is_file(f"{folder}/{MARKER}"):
        storage.remove_file(f"{folder}/{MARKER}")


def _remove_set_folder(folder: str) -> None:
    """Remove an old set's folder; at a URL its marker first, so that a removal cut short leaves no half set
    marked published."""
    if is_url(folder):
        _remove_marker(folder)
    storage.remove_tree(folder)


def _set_folders(path: str) -> list[tuple[int, str]]:
    """(N, folder) of path's .NAME.N folders, by N."""
    return sorted((_generation(folder.rstrip("/")), folder.rstrip("/"))
                  for folder in storage.glob(_set_folder(path, "*")))


def _generation(folder: str) -> int:
    """N of a set folder .NAME.N; -1 for anything else."""
    match = re.search(r"\.(\d+)$", folder)
    return int(match.group(1)) if match else -1


def _set_folder(path: str, suffix: str) -> str:
    return beside_set(path, f".{suffix}")


def beside_set(path: str, suffix: str) -> str:
    """`.NAME{suffix}` beside the set path (NAME its last part): a hidden name, local or at a URL."""
    parent, name = os.path.split(path.rstrip("/") if is_url(path) else os.path.normpath(path))
    return os.path.join(parent, f".{name}{suffix}")
