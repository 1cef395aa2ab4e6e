"""A large CSV read in pieces that end where rows end, parsed in order: in this process, or in worker processes.

Knows nothing of what the rows mean: the caller gives the function that parses a piece's bytes (a module
function, or a functools.partial of one, so that worker processes can run it). Memory stays bounded whatever
the file's size: a piece is about CHUNK_BYTES, and at most 2 pieces per worker are in flight.
"""

import gc
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

import numpy as np

from prompt_search.children import die_with

CHUNK_BYTES = 16 << 20  # CSV bytes parsed as one piece: bounds memory whatever the CSV size
MAX_CHUNK_BYTES = 4 * CHUNK_BYTES  # a piece is cut at its last line end once this big, even inside quotes
Parsed = TypeVar("Parsed")


def worker_count(csv_file: str, workers: int) -> int:
    """The parsing processes to run for csv_file when asked for workers (-1: one per CPU core free now)."""
    if os.path.getsize(csv_file) < 4 * CHUNK_BYTES:  # a worker takes a second to start: not worth it for a few pieces
        return 1
    return free_cores(usable_cores(), os.getloadavg()[0]) if workers < 0 else workers


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def free_cores(cores: int, load: float) -> int:
    """The cores that other work leaves idle, with load processes running on average (the 1-minute load), at least 1.

    Parsing processes sharing a core with other jobs were slower than the script alone (0.92x): a busy core is
    not counted. 1 means parsing in the script's own process.
    """
    return max(1, min(cores, int(cores - load + 0.5)))  # to the nearest core


def pieces(raw) -> Iterator[tuple[int, bytes]]:
    """(offset in the file, bytes) for the rest of the CSV, in pieces of about CHUNK_BYTES that end where a row ends."""
    size = CHUNK_BYTES
    while True:
        start = raw.tell()
        data = raw.read(size)
        if not data:
            return
        end = len(data) if len(data) < size else _last_row_end(data)  # a short read ends at the end of the file
        if not end and size >= MAX_CHUNK_BYTES:  # a stray quote makes the rest look quoted
            end = data.rfind(b"\n") + 1
        if not end:  # no row ends in it: read a longer piece from the same place
            raw.seek(start)
            size *= 2
            continue
        raw.seek(start + end)
        size = CHUNK_BYTES
        yield start, data[:end]


def _last_row_end(buffer: bytes) -> int:
    """Just past the last line end with an even number of quote characters before it (outside quotes), or 0."""
    end = buffer.rfind(b"\n")
    quotes = np.count_nonzero(np.frombuffer(buffer, np.uint8, max(end, 0)) == ord('"'))  # 3x bytes.count's speed
    while end >= 0 and quotes % 2:
        before = buffer.rfind(b"\n", 0, end)
        quotes -= buffer.count(b'"', before + 1, end)
        end = before
    return end + 1


def parse_in_order(csv_file: str, file_pieces: Iterator[tuple[int, bytes]], parse: Callable[[bytes], Parsed],
                   workers: int) -> Iterator[Parsed]:
    """parse over the pieces, in their order; with workers > 1, in that many processes at once."""
    if workers <= 1:
        yield from (parse(piece) for _, piece in file_pieces)
        return
    # spawn, not fork: pyarrow's and tqdm's threads are already running in this process.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(os.getpid(),))
    try:
        pending: deque[Future] = deque()
        for start, piece in file_pieces:  # each worker reads its piece from the file: cheaper than sending it
            pending.append(pool.submit(_parse_file_piece, csv_file, start, len(piece), parse))
            if len(pending) > 2 * workers:  # a bounded queue: reading must not run ahead of parsing
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


def _parse_file_piece(csv_file: str, start: int, size: int, parse: Callable[[bytes], Parsed]) -> Parsed:
    with open(csv_file, "rb") as f:
        f.seek(start)
        return parse(f.read(size))


def _start_worker(parent: int) -> None:
    """In each parsing process: no cyclic collector, and death with the script's process (children.py).

    Parsing makes many objects and no reference cycles: the collector rescanning them took a fifth of the time.
    """
    gc.disable()
    die_with(parent)
