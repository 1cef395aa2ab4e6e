"""Step 1's duplicate check: which rows' URLs were kept before, exact, in memory bounded whatever the CSV's size.

Each URL is keyed by the 8 bytes of its digest (links.url_id). The keys of the first MEMORY_KEYS kept URLs are
held in memory (KeptUrls), and the rows up to then are checked as they are read. Past that, a row whose key is
not among them is set aside with its key (LateRows, Parquet files in the set folder) and checked against the
other late rows at the end, by DuckDB, which spills to disk past its memory limit; the rows that pass are then
appended in order. So every output is the same as with unbounded memory. With the default, nearly all of
open-prompts' 10M rows are checked in memory (1.6M are set aside).
"""

import csv
import heapq
import os
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

MEMORY_KEYS = 1 << 23  # keys held in memory: 64 MB (128 MB while merging), the rest is checked at the end
DUCKDB_MEMORY = "128MB"  # DuckDB's limit for the late rows' check; it spills to the set folder past it
WALK_ROWS = 8192  # late rows read back at a time once checked
Reject = tuple[int, str, str]  # (csv line, reason, detail)


class KeptUrls:
    """The keys of the URLs kept so far, sorted: a large array and a small one of the latest.

    New keys go into the small one, merged into the large one once it holds RECENT_KEYS: inserting into one
    array for every piece copied all of it each time, 13 s of the main process's time at 10M rows.
    """

    RECENT_KEYS = 1 << 19

    def __init__(self) -> None:
        self.large = self.recent = np.empty(0, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.large) + len(self.recent)

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Keep keys; return which of them are new: the first of their value, and not kept before."""
        unique, first = np.unique(keys, return_index=True)
        new = ~self.contains(unique)
        self.recent = _merged(self.recent, unique[new])
        if len(self.recent) >= self.RECENT_KEYS:
            self.large, self.recent = _merged(self.large, self.recent), self.recent[:0]
        fresh = np.zeros(len(keys), dtype=bool)
        fresh[first[new]] = True
        return fresh

    def contains(self, keys: np.ndarray) -> np.ndarray:
        return _contains(self.large, keys) | _contains(self.recent, keys)


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    return sorted_keys[np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)] == keys


def _merged(sorted_keys: np.ndarray, new: np.ndarray) -> np.ndarray:
    return np.insert(sorted_keys, np.searchsorted(sorted_keys, new), new)


class LateRows:
    """The rows read once KeptUrls is full, set aside in folder until every row has been read (see the module).

    Holds late.parquet (the rows not among the kept URLs, with their key) and late-rejects.csv (the rows
    refused meanwhile, in line order); finish() adds late-duplicates.parquet and removes all three.
    """

    def __init__(self, folder: str, schema: pa.Schema, kept: KeptUrls):
        self.schema, self.kept = schema, kept
        self.rows_path = os.path.join(folder, "late.parquet")
        self.rejects_path = os.path.join(folder, "late-rejects.csv")
        self.lines_path = os.path.join(folder, "late-duplicates.parquet")  # the lines of the duplicates among them
        self.rows = pq.ParquetWriter(self.rows_path, schema.append(pa.field("url_key", pa.uint64())))
        self.rejects_file = open(self.rejects_path, "w", encoding="utf-8", newline="")
        self.rejects = csv.writer(self.rejects_file)

    def add(self, table: pa.Table, keys: np.ndarray, rejects: list[Reject]) -> list[Reject]:
        """Set aside a piece's rows (in SCHEMA, keys: their url keys) and its rejects; return those rejects, with
        the rows whose URL was kept before the memory filled among them."""
        earlier = self.kept.contains(keys)
        table, rejects = without_duplicates(table, earlier, rejects)
        keys = keys[~earlier]
        self.rows.write_table(table.append_column("url_key", pa.array(keys, pa.uint64())))
        self.rejects.writerows(rejects)
        return rejects

    def __enter__(self) -> "LateRows":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.rows.close()
        self.rejects_file.close()

    def finish(self, write_kept: Callable[[pa.Table], None], rejects) -> int:
        """Check the late rows against each other: hand the first row of each URL to write_kept, in order, write
        every late reject to the csv writer rejects, in line order. Return how many duplicates were found."""
        self.close()
        found = 0

        def duplicates() -> Iterator[Reject]:
            """The late rows' duplicates in line order; the other rows go to write_kept on the way."""
            nonlocal found
            lines = _later_lines(self.rows_path, self.lines_path)
            for batch in pq.ParquetFile(self.rows_path).iter_batches(WALK_ROWS, columns=self.schema.names):
                if not batch.num_rows:
                    continue
                table = pa.Table.from_batches([batch]).cast(self.schema)  # Parquet keeps seconds as ms
                later = pc.is_in(table["csv_line"], pa.array(lines.upto(batch["csv_line"][-1].as_py()), pa.int64()))
                table, repeated = without_duplicates(table, later.to_numpy(zero_copy_only=False), [])
                write_kept(table)
                found += len(repeated)
                yield from repeated

        with open(self.rejects_path, encoding="utf-8", newline="") as f:
            set_aside = ((int(line), reason, detail) for line, reason, detail in csv.reader(f))
            rejects.writerows(heapq.merge(set_aside, duplicates()))
        for path in (self.rows_path, self.rejects_path, self.lines_path):
            os.remove(path)
        return found


class _Lines:
    """Sorted lines, read in stretches from a stream of record batches."""

    def __init__(self, batches: Iterator[pa.RecordBatch]):
        self.batches, self.pending = batches, np.empty(0, dtype=np.int64)

    def upto(self, last: int) -> np.ndarray:
        """The next lines, up to last (included)."""
        while not len(self.pending) or self.pending[-1] <= last:
            batch = next(self.batches, None)
            if batch is None:
                break
            self.pending = np.concatenate([self.pending, batch.column(0).to_numpy()])
        cut = np.searchsorted(self.pending, last, side="right")
        lines, self.pending = self.pending[:cut], self.pending[cut:]
        return lines


def _later_lines(rows_path: str, lines_path: str) -> _Lines:
    """The lines of the late rows whose key an earlier late row has, sorted: written to lines_path by DuckDB, which
    is closed before they are read, so that its memory and the walk's are not held at once."""
    import duckdb  # only a CSV past MEMORY_KEYS needs it

    # The query's own ORDER BY gives the order: without insertion order kept, DuckDB's peak halved at 9M rows. Two
    # threads: each thread's buffers count against the memory limit, and one per core of a large machine would not fit.
    with duckdb.connect(config={"memory_limit": DUCKDB_MEMORY, "temp_directory": lines_path + ".tmp",
                                "preserve_insertion_order": False, "threads": 2}) as db:
        db.execute(
            "COPY (WITH late AS (SELECT csv_line, url_key FROM read_parquet($rows)), "
            "firsts AS (SELECT url_key, min(csv_line) AS first FROM late GROUP BY url_key HAVING count(*) > 1) "
            "SELECT csv_line FROM late JOIN firsts USING (url_key) WHERE csv_line <> first ORDER BY csv_line) "
            "TO $lines (FORMAT parquet)", {"rows": rows_path, "lines": lines_path})
    return _Lines(pq.ParquetFile(lines_path).iter_batches(WALK_ROWS))


def without_duplicates(table: pa.Table, duplicate: np.ndarray, rejects: list[Reject]) -> tuple[pa.Table, list[Reject]]:
    """table (in step 1's schema) without the rows marked duplicate, and rejects with a reject for each of those
    rows (its URL was kept before), in line order."""
    if not duplicate.any():
        return table, rejects
    dropped = table.filter(duplicate)
    rejects = sorted(rejects + [(line, "duplicate_url", url) for line, url in zip(
        dropped["csv_line"].to_pylist(), dropped["url"].to_pylist(), strict=True)])
    return table.filter(~duplicate), rejects
