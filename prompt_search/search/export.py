"""A query's results as a training set in kohya's layout (README: Triage):

    <EXPORT_SUBFOLDER>/0001.png, 0001.txt, ...  each image beside its caption (its prompt: captions.py)
    results.parquet                              every result: rank, score, file (null when skipped), caption,
                                                 why it was skipped, and every column of the index's item table

An image is copied from the images folder (for a prompt, the image of its id), else fetched from its http(s) link
by step 2's rules (sources/image_fetch.py); a result with neither is listed in results.parquet, skipped. Written into
a new folder (export_results.py, write_folder) or streamed as a zip (POST /api/export, zip_stream). Every name in an
export is made here from the rank, never from an id, a path or a prompt: nothing in an index places a file outside.
"""

import io
import os
import re
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from prompt_search import storage
from prompt_search.children import process_exists
from prompt_search.errors import UserError
from prompt_search.search.captions import caption
from prompt_search.search.core import Hit
from prompt_search.search.service import Answer, OpenSide, Searcher
from prompt_search.settings import ExportSettings
from prompt_search.sources.image_fetch import MAX_IMAGE_BYTES, NETWORK_ERRORS, FetchFailed, fetch_image, training_image

RESULTS_FILE = "results.parquet"
AT_ONCE = 8  # images read or fetched at once: an export holds at most AT_ONCE x MAX_IMAGE_BYTES
# results.parquet's own columns, before the item table's
OWN_FIELDS = [("rank", pa.int32()), ("score", pa.float64()), ("file", pa.string()), ("caption", pa.string()),
              ("skipped", pa.string()), ("index", pa.string()), ("id", pa.string()), ("prompt", pa.string()),
              ("url", pa.string()), ("path", pa.string())]


@dataclass
class Picked:
    """One result as exported: its image's bytes and file suffix, or why it has none."""
    hit: Hit
    image: bytes = b""
    suffix: str = ""
    skipped: str = ""


def exported_files(searcher: Searcher, side: str, answer: Answer, settings: ExportSettings
                   ) -> Iterator[tuple[str, bytes]]:
    """(name inside the export, bytes) of each file of answer's hits: each image and its caption in rank order,
    results.parquet last. Images are read or fetched AT_ONCE at a time, and only that many are held at once. Each
    hit is found in the sides it was searched in (answer.view): a live index's fold meanwhile renumbers the rows."""
    rows = []
    pool = ThreadPoolExecutor(AT_ONCE, thread_name_prefix="export")
    try:
        for start in range(0, len(answer.hits), AT_ONCE):
            chunk = answer.hits[start : start + AT_ONCE]
            for number, picked in enumerate(pool.map(lambda hit: _pick(searcher, side, hit, answer.view, settings),
                                                     chunk), start + 1):
                text = caption(picked.hit.prompt, settings.export_strip_weights)
                name = f"{settings.export_subfolder}/{number:04d}" if not picked.skipped else ""
                if name:
                    yield name + picked.suffix, picked.image
                    yield name + ".txt", text.encode("utf-8")
                rows.append(_row(picked, side, name and name + picked.suffix, text))
    finally:  # a client gone mid-export: its stream is closed on the server's event loop, which must not wait
        pool.shutdown(wait=False, cancel_futures=True)
    yield RESULTS_FILE, _results_table(answer.view[side], rows)


def _pick(searcher: Searcher, side: str, hit: Hit, view: dict[str, OpenSide], settings: ExportSettings) -> Picked:
    """The hit's image: its file in the images folder, else its link fetched. Whatever fails, the hit is skipped
    with the reason, and the export goes on."""
    position = searcher.picture(side, hit, view)
    path = searcher.image_file("images", position, view) if position is not None else None
    try:
        if path is not None:
            if storage.size(path) > MAX_IMAGE_BYTES:
                return Picked(hit, skipped=f"larger than {MAX_IMAGE_BYTES // 2**20} MB")
            return Picked(hit, *training_image(storage.read_bytes(path)))
        if not hit.url:
            return Picked(hit, skipped="no image here and no link")
        return Picked(hit, *fetch_image(hit.url, settings.download_timeout, settings.download_retries))
    except (FetchFailed, UserError, *NETWORK_ERRORS) as error:  # UserError: storage at a URL that failed
        return Picked(hit, skipped=str(error) or type(error).__name__)


def _row(picked: Picked, side: str, file: str, text: str) -> dict:
    hit = picked.hit
    return {"rank": hit.rank, "score": hit.score, "file": file or None, "caption": text,
            "skipped": picked.skipped or None, "index": side, "id": hit.id, "prompt": hit.prompt,
            "url": hit.url or None, "path": hit.path or None, **hit.extra}


def _results_table(opened: OpenSide, rows: list[dict]) -> bytes:
    """results.parquet: the item table's columns in its own types (a seed stays an exact uint64)."""
    schema = opened.searched.items.reader.schema
    taken = {name for name, _ in OWN_FIELDS}
    fields = [*OWN_FIELDS, *((field.name, field.type) for field in schema if field.name not in taken)]
    table = pa.Table.from_pylist(rows, schema=pa.schema(fields))
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd")
    return out.getvalue()


class _Chunks(io.RawIOBase):
    """A write-only stream whose bytes are taken as they come: zipfile writes an unseekable zip into it."""

    def __init__(self) -> None:
        self.pending = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]  (bytes in, as zipfile writes)
        self.pending += data
        return len(data)

    def take(self) -> bytes:
        taken, self.pending = bytes(self.pending), bytearray()
        return taken


def zip_stream(files: Iterator[tuple[str, bytes]]) -> Iterator[bytes]:
    """The files as a zip, yielded a file at a time (never the whole zip in memory). Images are stored as they
    are (already compressed); captions and the table are deflated."""
    sink = _Chunks()
    with zipfile.ZipFile(sink, "w") as archive:
        for name, data in files:
            packed = zipfile.ZIP_STORED if not name.endswith((".txt", ".parquet")) else zipfile.ZIP_DEFLATED
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16  # -rw-r--r-- when unpacked, as a file written to a folder
            archive.writestr(info, data, compress_type=packed)
            yield sink.take()
    yield sink.take()  # the central directory, written on close


def check_new(folder: str) -> None:
    if os.path.lexists(folder):
        raise UserError(f"{folder} exists: an export never writes into an existing folder; set --EXPORT_DIR to a "
                        "new one")


def write_folder(folder: str, files: Iterator[tuple[str, bytes]]) -> None:
    """The files in folder, which must not exist: written in a hidden folder beside it (.NAME.partial-PID), then
    renamed to it whole, so that a reader (or kohya) never sees half an export. What a killed export left is removed
    by the next."""
    folder = os.path.abspath(folder)
    check_new(folder)
    parent, base = os.path.split(folder)
    os.makedirs(parent, exist_ok=True)
    _remove_left_partials(parent, base)
    partial = os.path.join(parent, f".{base}.partial-{os.getpid()}")
    os.mkdir(partial)  # the umask's mode, as any folder the user makes
    try:
        for name, data in files:
            path = os.path.join(partial, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "xb") as out:
                out.write(data)
        check_new(folder)  # one made while the export ran is left as it is
        os.rename(partial, folder)
    except BaseException:
        storage.remove_tree(partial)
        raise


def _remove_left_partials(parent: str, base: str) -> None:
    """The partial folders of exports to base whose process is gone (killed), and this process's own of an earlier
    process that had its number."""
    for entry in os.scandir(parent):
        found = re.fullmatch(re.escape(f".{base}.partial-") + r"([0-9]+)", entry.name)
        if found and (int(found.group(1)) == os.getpid() or not process_exists(int(found.group(1)))):
            storage.remove_tree(entry.path)

