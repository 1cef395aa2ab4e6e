"""Find the images to embed: listing a folder, each image's id, and paths as text.

An image img2dataset wrote carries its row's id in its .json sidecar; any other image's id is
its path relative to the folder, so a user's own folder of generations works as it is. Paths and path ids are
carried as path_as_text gives them (valid UTF-8 whatever the file's name), and opened through path_from_text.
"""

import json
import os
import re
import stat
from typing import NamedTuple

from prompt_search import storage
from prompt_search.sources.urls import url_id

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MAX_ID_CHARS = 256  # a longer id in a sidecar is refused: ids are stored in fixed-width arrays and shown on pages
MAX_SIDECAR_BYTES = 1 << 20  # img2dataset's sidecars are a few hundred bytes; a larger one is not read whole
SURROGATE = re.compile("[\ud800-\udfff]")  # os.fsdecode's stand-in for a byte that is not UTF-8 (\udc80-\udcff)
# What a path names when it is not a regular file: a step never opens it (a FIFO waits for a writer forever, a
# device such as /dev/zero never ends)
FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
              stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


class Refused(NamedTuple):
    """A file list_images leaves out, or a folder it could not list: its path (path_as_text), the reason's code
    (step 1's rejects.csv: duplicate_id, not_a_file, unreadable_folder) and the reason in words (step 3's
    skipped.csv)."""

    path: str
    code: str
    reason: str


def path_as_text(path: str) -> str:
    """path as text that is valid UTF-8 (Parquet and Arrow store nothing else), which path_from_text turns back
    into path: path itself, unless it holds a byte that is not UTF-8 (os.fsdecode's surrogate \\udcXX for the
    byte XX) or starts with a double quote; then its JSON string literal, each surrogate written \\udcXX."""
    if not SURROGATE.search(path) and not path.startswith('"'):
        return path
    return SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", json.dumps(path, ensure_ascii=False))


def path_from_text(text: str) -> str:
    """The path path_as_text gave text for (a str os.fsencode turns into the file name's own bytes)."""
    return json.loads(text) if text.startswith('"') else text


def list_images(img_dir: str) -> tuple[list[tuple[str, str]], list[Refused], list[tuple[str, str]]]:
    """Every image below img_dir in a deterministic order (sorted paths), as three lists:

    (id, path) of each image to embed; each image refused, in that order (another image before it has its id: two
    sidecars naming one row; not a regular file), and each folder below img_dir that could not be listed, where
    the walk met it; (sidecar, problem) of each sidecar that could not give an id, whose image then has its path id.
    Paths are path_as_text's.
    """
    items, refused, problems = [], [], []
    first_path: dict[str, str] = {}

    def unreadable(error: OSError) -> None:
        folder = path_as_text(str(getattr(error, "filename", None) or img_dir))
        detail = getattr(error, "strerror", None) or error
        refused.append(Refused(folder, "unreadable_folder", f"folder cannot be read: {type(error).__name__}: {detail}"))

    for root, dirs, files in storage.walk(img_dir, onerror=unreadable):
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = os.path.join(root, name)
            kind = not_a_file(path)
            if kind:
                refused.append(Refused(path_as_text(path), "not_a_file", f"not a regular file ({kind}): not opened"))
                continue
            found, problem = _image_id(path, img_dir)
            if problem:
                problems.append(problem)
            if found in first_path:
                refused.append(Refused(path_as_text(path), "duplicate_id",
                                       f"duplicate id {found!r}: {first_path[found]} has it already"))
                continue
            first_path[found] = path_as_text(path)
            items.append((found, first_path[found]))
    return items, refused, problems


def not_a_file(path: str) -> str:
    """"" when path is a regular file or a link to one, else what it is in words; never opens it. A file at a URL
    is a file (object stores hold nothing else)."""
    if storage.is_url(path):
        return ""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:  # a link to nothing, or a folder that may be listed but not searched
        return f"cannot be reached: {type(error).__name__}: {error.strerror}"
    return "" if stat.S_ISREG(mode) else FILE_KINDS.get(stat.S_IFMT(mode), "not a file")


def print_unreadable_folders(refused: list[Refused]) -> None:
    """One line naming the first folder that could not be listed and counting them, when there are any: their
    images are missing."""
    folders = [r for r in refused if r.code == "unreadable_folder"]
    if folders:
        many = len(folders) > 1
        print(f"{len(folders)} folder{'s' if many else ''} could not be read, so {'their' if many else 'its'} images "
              f"are missing; first: {folders[0].path}: {folders[0].reason}")


def _image_id(path: str, img_dir: str) -> tuple[str, tuple[str, str] | None]:
    """The image's id, from its sidecar when it has a usable one, else its relative path; and the sidecar's problem."""
    path_id = path_as_text(os.path.relpath(path, img_dir).replace(os.sep, "/"))
    sidecar = os.path.splitext(path)[0] + ".json"
    if not storage.is_file(sidecar):
        return path_id, None
    sidecar_text = path_as_text(sidecar)
    if storage.size(sidecar) > MAX_SIDECAR_BYTES:
        return path_id, (sidecar_text, f"over {MAX_SIDECAR_BYTES} bytes")
    try:
        meta = json.loads(storage.read_bytes(sidecar))
    except (OSError, ValueError, RecursionError) as error:  # not UTF-8, not JSON, or nested past the parser's depth
        return path_id, (sidecar_text, f"not a JSON object ({type(error).__name__})")
    if not isinstance(meta, dict):
        return path_id, (sidecar_text, f"not a JSON object (a {type(meta).__name__})")
    if meta.get("id"):
        found = str(meta["id"])
    elif meta.get("url"):  # downloaded from the plain link list: step 1's id is the URL's hash
        found = url_id(str(meta["url"]))
    else:
        return path_id, None
    problem = _id_problem(found)
    return (path_id, (sidecar_text, problem)) if problem else (found, None)


def _id_problem(found: str) -> str:
    """Why a sidecar's id can't be an id, or "". numpy's unicode arrays (the ids files) drop trailing NULs, so
    that "nul\\0" would become "nul"; Parquet and Arrow store valid UTF-8 only (JSON may escape a lone surrogate)."""
    if len(found) > MAX_ID_CHARS:
        return f"id of {len(found)} characters, over {MAX_ID_CHARS}"
    if "\0" in found:
        return "id holds a NUL character"
    if SURROGATE.search(found):
        return "id holds a lone surrogate (\\ud800-\\udfff), which is not text"
    return ""
