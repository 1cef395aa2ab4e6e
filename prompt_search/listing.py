"""The distinct prompts of the metadata table, listed once on disk for step 3' and read from there batch by batch.

Each distinct non-empty prompt is listed once, under the id of its first row, in first-row order, so
that the embeddings are the same whatever runs them. Two prompts are the same prompt when Python's
`" ".join(prompt.split()).casefold()` of each is equal (case and white space ignored). That rule is
applied with Arrow compute, which has no casefold: a row holding a character whose Arrow lower case
differs from its casefold ('ß', 'İ', 'ς', Cherokee...) gets its key from Python instead, so the rule
stays exact. DuckDB then keeps the first row of each key; it spills to disk past its memory limit, so
memory stays bounded whatever the number of distinct prompts. The listing is an Arrow IPC file read one
record batch at a time: step 3' holds a few thousand prompts at a time.
"""

import functools
import hashlib
import os
import re
import shutil
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from prompt_search.cli import UserError

LISTING_SCHEMA = pa.schema([("id", pa.string()), ("prompt", pa.string())])
BATCH_ROWS = 1 << 16
LISTING_ROWS = 1 << 12  # items per record batch of the listing: a read per 4096 prompts
T, U = TypeVar("T"), TypeVar("U")
DUCKDB_MEMORY = "400MB"  # with Arrow's batches and the interpreter, the listing stays well under 1 GiB


@functools.cache
def _all_characters() -> str:
    codepoints = np.arange(sys.maxunicode + 1, dtype="<u4")
    return codepoints[(codepoints < 0xD800) | (codepoints > 0xDFFF)].tobytes().decode("utf-32-le")


def _character_class(characters: str) -> str:
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in characters) + "]"


@functools.cache
def _python_space() -> str:
    """The characters str.split() splits on (re's \\s for str is that same test, Py_UNICODE_ISSPACE)."""
    return "".join(re.findall(r"\s", _all_characters()))


@functools.cache
def _folded_apart() -> str:
    """The characters whose Arrow lower case (utf8proc's one-to-one mapping) is not their casefold; none is ASCII.

    Computed from the two libraries in use, so it follows their Unicode versions; compared in blocks
    first, as most blocks agree throughout.
    """
    text = _all_characters()
    lowered = pc.utf8_lower(pa.array([text]))[0].as_py()
    apart = ""
    for start in range(0, len(text), 256):
        block, lower = text[start:start + 256], lowered[start:start + 256]
        if block.casefold() != lower:
            apart += "".join(c for c, low in zip(block, lower, strict=True) if c.casefold() != low)
    return apart


@functools.cache
def _patterns() -> tuple[str, str, str]:
    """RE2 patterns: a prompt off the fast road (white space other than single spaces, or a non-ASCII character);
    a run of white space; a character whose key Python must make."""
    odd_ascii_space = "".join(c for c in _python_space() if c.isascii() and c != " ")
    unusual = f"^ | $|  |{_character_class(odd_ascii_space)}|[^\\x00-\\x7f]"
    return unusual, _character_class(_python_space()) + "+", _character_class(_folded_apart())


def prompt_keys(prompts: pa.Array) -> pa.Array:
    """`" ".join(prompt.split()).casefold()` of each prompt (null for null), vectorised but for rare characters."""
    # Most prompts are ASCII and single-spaced: their key is ascii_lower, 25x faster than utf8_lower. One regex match
    # finds the others, and only they take the slow road: respaced (replacing is 10x slower than matching),
    # lower-cased by Arrow, or by Python where Arrow's lower case is not the casefold.
    unusual, spaces, apart = _patterns()
    off_road = pc.fill_null(pc.match_substring_regex(prompts, unusual), False)
    keys = pc.ascii_lower(prompts)
    if not pc.any(off_road).as_py():
        return keys
    odd = pc.filter(prompts, off_road)
    odd_keys = pc.utf8_lower(pc.utf8_trim(pc.replace_substring_regex(odd, spaces, " "), " "))
    by_python = pc.match_substring_regex(odd, apart)
    if pc.any(by_python).as_py():
        exact = [" ".join(p.split()).casefold() for p in pc.filter(odd, by_python).to_pylist()]
        odd_keys = pc.replace_with_mask(odd_keys, by_python, pa.array(exact, pa.string()))
    return pc.replace_with_mask(keys, off_road, odd_keys)


def write_listing(metadata_file: str, path: str) -> tuple[int, int]:
    """Write the Arrow IPC file path: (id, prompt) of each distinct non-empty prompt of metadata_file, under the
    id of its first row, in first-row order. Return (distinct prompts, rows without a prompt)."""
    if not os.path.isfile(metadata_file):
        raise UserError(f"{metadata_file} not found: run extract_img_links_from_csv.py first")
    empty = 0

    def keys() -> Iterator[pa.RecordBatch]:
        nonlocal empty
        row = 0
        for key in _in_threads(prompt_keys, (batch["prompt"] for batch in pq.ParquetFile(metadata_file).iter_batches(
                BATCH_ROWS, columns=["prompt"]))):
            kept = pc.fill_null(pc.not_equal(key, ""), False)
            empty += len(key) - (pc.sum(kept).as_py() or 0)
            rows = pa.array(np.arange(row, row + len(key), dtype=np.int64))
            row += len(key)
            yield pa.record_batch([rows.filter(kept), key.filter(kept)], names=["row", "key"])

    spill = path + ".tmp"
    try:
        with duckdb.connect(config={"memory_limit": DUCKDB_MEMORY, "temp_directory": spill}) as db:
            db.register("keys", pa.RecordBatchReader.from_batches(
                pa.schema([("row", pa.int64()), ("key", pa.string())]), keys()))
            first = db.execute("SELECT min(row) AS first FROM keys GROUP BY key ORDER BY first").fetchnumpy()["first"]
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    _write_rows(metadata_file, np.asarray(first, dtype=np.int64), path)
    return len(first), empty


def _in_threads(function: Callable[[T], U], inputs: Iterable[T]) -> Iterator[U]:
    """function of each input, in order, computed one per core at a time (Arrow compute lets go of the GIL)."""
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        pending: deque[Future[U]] = deque()
        for item in inputs:
            pending.append(pool.submit(function, item))
            if len(pending) > (os.cpu_count() or 1):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _write_rows(metadata_file: str, rows: np.ndarray, path: str) -> None:
    """Copy (id, prompt) of the given sorted rows of metadata_file into the Arrow IPC file path, in record batches
    of exactly LISTING_ROWS rows but the last, so that item i lies in batch i // LISTING_ROWS."""
    start, pending = 0, []
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, LISTING_SCHEMA) as writer:
        for batch in pq.ParquetFile(metadata_file).iter_batches(BATCH_ROWS, columns=["id", "prompt"]):
            low, high = np.searchsorted(rows, [start, start + batch.num_rows])
            pending.append(batch.take(pa.array(rows[low:high] - start)).cast(LISTING_SCHEMA))
            start += batch.num_rows
            table = pa.Table.from_batches(pending, LISTING_SCHEMA).combine_chunks()
            whole = table.num_rows - table.num_rows % LISTING_ROWS
            writer.write_table(table.slice(0, whole), max_chunksize=LISTING_ROWS)
            pending = table.slice(whole).to_batches()
        writer.write_table(pa.Table.from_batches(pending, LISTING_SCHEMA))


class Listing(Sequence):
    """The listing file at path: item i is (id, prompt) of the ith distinct prompt. Read one record batch at a time
    (not memory-mapped: the pages of a mapped file would count in the process's memory once read)."""

    def __init__(self, path: str):
        self.reader = pa.ipc.open_file(pa.OSFile(path))
        last = self.reader.get_batch(self.reader.num_record_batches - 1).num_rows
        self.count = (self.reader.num_record_batches - 1) * LISTING_ROWS + last
        self.cached: tuple[int, pa.RecordBatch] | None = None

    def __len__(self) -> int:
        return self.count

    def _batch(self, number: int) -> pa.RecordBatch:
        if self.cached is None or self.cached[0] != number:  # batches of embedding are read in order
            self.cached = number, self.reader.get_batch(number)
        return self.cached[1]

    def __getitem__(self, i: int | slice) -> tuple[str, str] | list[tuple[str, str]]:
        if isinstance(i, slice):  # one read per record batch, not per item
            indices = range(len(self))[i]
            if indices.step != 1:
                raise ValueError("a listing is read in ranges of consecutive items")
            return list(zip(*self.columns(indices), strict=True)) if indices else []
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        ids, prompts = self.columns(range(i % len(self), i % len(self) + 1))
        return ids[0], prompts[0]

    def columns(self, indices: range) -> tuple[list[str], list[str]]:
        """The ids and prompts of a range of consecutive items."""
        ids, prompts = [], []
        for number in range(indices.start // LISTING_ROWS, (indices.stop - 1) // LISTING_ROWS + 1):
            first = number * LISTING_ROWS
            rows = self._batch(number).slice(max(indices.start - first, 0), indices.stop - max(indices.start, first))
            ids += rows["id"].to_pylist()
            prompts += rows["prompt"].to_pylist()
        return ids, prompts

    def digest(self) -> str:
        """embed.items_digest of the items, one Arrow batch at a time: a set made before the listing existed
        is still recognised."""
        digest = hashlib.sha256()
        for number in range(self.reader.num_record_batches):
            batch = self.reader.get_batch(number)
            if not batch.num_rows:
                continue
            lines = pc.binary_join_element_wise(batch["id"], pc.binary_join_element_wise(batch["prompt"], "\n", ""),
                                                "\t")
            offsets = np.frombuffer(lines.buffers()[1], np.int32)[lines.offset:lines.offset + len(lines) + 1]
            digest.update(memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]])
        return digest.hexdigest()
