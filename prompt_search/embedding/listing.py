"""The distinct prompts of the metadata table, listed once on disk for step 3' and read from there batch by batch.

Each distinct non-empty prompt is listed once, under the id of its first row, in first-row order, so
that the embeddings are the same whatever runs them. Two prompts are the same prompt when Python's
`" ".join(prompt.split()).casefold()` of each is equal (case and white space ignored). Most prompts
get that key from Arrow compute, the rest from Python (prompt_keys). Row groups of the table are read
and keyed in threads, one per core up to 8. DuckDB then keeps the first row of each key; it spills to disk past its
memory limit, so memory stays bounded whatever the number of distinct prompts. The listing is an Arrow IPC
file read one record batch at a time: step 3' holds a few thousand prompts at a time.
"""

import hashlib
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from prompt_search.errors import UserError

LISTING_SCHEMA = pa.schema([("id", pa.string()), ("prompt", pa.string())])
LISTING_ROWS = 1 << 12  # items per record batch of the listing: a read per 4096 prompts
T, U = TypeVar("T"), TypeVar("U")
# Row groups read at once (each ~20 MB in flight: prompts and keys of 65,536 rows) and DuckDB's threads (each one's
# buffers count against DUCKDB_MEMORY): one per core up to 8, so that a 64-core machine does not hold a gigabyte.
THREADS = min(os.cpu_count() or 1, 8)
DUCKDB_MEMORY = "400MB"  # with Arrow's batches and the interpreter, the listing stays well under 1 GiB


def prompt_keys(prompts: pa.Array) -> pa.Array:
    """`" ".join(prompt.split()).casefold()` of each prompt (null for null), vectorised for most prompts."""
    # A prompt of printable ASCII with single spaces between words is its own split and join, and its casefold is
    # its ASCII lower case: Arrow's ascii_lower, no Python string. Any other (a tab, a run of spaces, a character
    # beyond ASCII) takes Python's rule itself: exact whatever the Unicode version, and faster than Arrow's
    # utf8_lower and regex replace on such rows (and utf8_lower's first call fills tables for 0.16 s).
    spaced = pc.or_(pc.starts_with(prompts, " "), pc.ends_with(prompts, " "))
    off_road = pc.or_(pc.fill_null(pc.or_(pc.invert(pc.ascii_is_printable(prompts)), spaced), False),
                      pa.array(_has_double_space(prompts)))
    keys = pc.ascii_lower(prompts)
    if not pc.any(off_road).as_py():
        return keys
    odd = [" ".join(prompt.split()).casefold() for prompt in pc.filter(prompts, off_road).to_pylist()]
    return pc.replace_with_mask(keys, off_road, pa.array(odd, pa.string()))


def _has_double_space(strings: pa.Array) -> np.ndarray:
    """Which strings hold two spaces in a row, from the bytes themselves (4x faster than Arrow's regex). A string
    that ends in a space before one that starts with a space counts too."""
    offsets = np.frombuffer(strings.buffers()[1], np.int32)[strings.offset:strings.offset + len(strings) + 1]
    found = np.zeros(len(strings), dtype=bool)
    if len(strings) and offsets[-1] > offsets[0]:
        space = np.frombuffer(strings.buffers()[2], np.uint8)[offsets[0]:offsets[-1]] == ord(" ")
        found[np.searchsorted(offsets, np.flatnonzero(space[:-1] & space[1:]) + offsets[0], side="right") - 1] = True
    if strings.null_count:  # a null's offsets may still span bytes
        found &= pc.is_valid(strings).to_numpy(zero_copy_only=False)
    return found


def write_listing(metadata_file: str, path: str) -> tuple[int, int]:
    """Write the Arrow IPC file path: (id, prompt) of each distinct non-empty prompt of metadata_file, under the
    id of its first row, in first-row order. Return (distinct prompts, rows without a prompt)."""
    if not os.path.isfile(metadata_file):
        raise UserError(f"{metadata_file} not found: run extract_img_links_from_csv.py first")
    metadata = pq.read_metadata(metadata_file)
    starts = np.cumsum([0] + [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])
    with_prompt = 0

    def keyed_rows(group: int) -> pa.RecordBatch:
        """(row, key) of the row group's rows with a prompt."""
        key = prompt_keys(_read_row_group(metadata_file, metadata, group, ["prompt"])["prompt"].combine_chunks())
        kept = pc.fill_null(pc.not_equal(key, ""), False)
        rows = pa.array(np.arange(starts[group], starts[group + 1], dtype=np.int64))
        return pa.record_batch([rows.filter(kept), key.filter(kept)], names=["row", "key"])

    def keys() -> Iterator[pa.RecordBatch]:
        nonlocal with_prompt
        for batch in _in_threads(keyed_rows, range(metadata.num_row_groups)):
            with_prompt += batch.num_rows
            yield batch

    spill = path + ".tmp"
    try:
        with duckdb.connect(config={"memory_limit": DUCKDB_MEMORY, "temp_directory": spill, "threads": THREADS}) as db:
            db.register("keys", pa.RecordBatchReader.from_batches(
                pa.schema([("row", pa.int64()), ("key", pa.string())]), keys()))
            first = db.execute("SELECT min(row) AS first FROM keys GROUP BY key ORDER BY first").fetchnumpy()["first"]
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    first = np.asarray(first, dtype=np.int64)

    def chosen(group: int) -> pa.Table:
        low, high = np.searchsorted(first, starts[group:group + 2])
        if low == high:  # none of its rows is the first of its prompt: nothing to read
            return LISTING_SCHEMA.empty_table()
        table = _read_row_group(metadata_file, metadata, group, ["id", "prompt"])
        return table.take(pa.array(first[low:high] - starts[group])).cast(LISTING_SCHEMA)

    _write_listing(_in_threads(chosen, range(metadata.num_row_groups)), path)
    return len(first), int(starts[-1]) - with_prompt


def _read_row_group(path: str, metadata: pq.FileMetaData, group: int, columns: list[str]) -> pa.Table:
    """One row group's columns, through a reader of its own: a row group is read in each thread."""
    return pq.ParquetFile(path, metadata=metadata).read_row_group(group, columns=columns, use_threads=False)


def _in_threads(function: Callable[[T], U], inputs: Iterable[T]) -> Iterator[U]:
    """function of each input, in order, computed THREADS at a time (Parquet and Arrow compute let go of
    the GIL)."""
    with ThreadPoolExecutor(THREADS) as pool:
        pending: deque[Future[U]] = deque()
        for item in inputs:
            pending.append(pool.submit(function, item))
            if len(pending) > THREADS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _write_listing(tables: Iterable[pa.Table], path: str) -> None:
    """Write the rows of tables, in order, into the Arrow IPC file path, in record batches of exactly LISTING_ROWS
    rows but the last, so that item i lies in batch i // LISTING_ROWS."""
    pending: list[pa.RecordBatch] = []
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, LISTING_SCHEMA) as writer:
        for chosen in tables:
            table = pa.Table.from_batches(pending + chosen.to_batches(), LISTING_SCHEMA).combine_chunks()
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
