"""The item table of an index set: row i describes the index's vector i (id, image path, prompt, link...).

Written by step 4 as an Arrow IPC file (items.arrow) in record batches, read memory-mapped: opening it
reads only its footer, and describing k hits reads k rows, whatever the size of the collection. The
table is a snapshot of the metadata when the index was built, so an index set answers on its own.

Columns: id, then `path` from the embeddings' images.parquet (visual side), then every column of
step 1's metadata.parquet but its id (url, prompt, width, height, seed, ...); a row whose id a
source lacks has nulls there. When every id is step 1's (the URL's 8-byte digest as 16 hex digits), the id column
holds the digests as unsigned 64-bit integers: 8 bytes a row instead of 20; other ids (the paths of a folder of
one's own images) stay strings. Either way ItemTable gives the ids as strings.
"""

import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

BATCH_ROWS = 65_536  # rows of items.arrow written at once: bounds memory while writing
HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)
NIBBLE = np.full(256, 255, np.uint8)  # the value of each lower-case hex digit's byte; 255 for any other byte
NIBBLE[HEX_DIGITS] = np.arange(16)


def write_items(path: str, ids: pa.Array, sources: list[str], scratch: str) -> None:
    """Write the item table for ids (in index order) to path, joining each Parquet source on its id column.

    Each source is first copied to an uncompressed Arrow file in scratch and memory-mapped, so that
    taking its rows in index order needs no more memory than a batch, whatever the source's size.
    """
    joined = []
    for number, source in enumerate(s for s in sources if s and os.path.isfile(s)):
        mapped = _mapped_copy(source, os.path.join(scratch, f"source-{number}.arrow"))
        rows = pc.index_in(ids, value_set=mapped.column("id").combine_chunks())
        joined.append((mapped.drop_columns(["id"]), rows))
    digests = as_digests(ids)
    columns = {"id": pa.string() if digests is None else pa.uint64()}
    for table, _ in joined:
        columns |= {field.name: field.type for field in table.schema if field.name not in columns}
    schema = pa.schema(columns)
    with pa.OSFile(path, "wb") as sink, ipc.new_file(sink, schema) as writer:
        for start in range(0, len(ids), BATCH_ROWS):
            chunk = {"id": ids[start : start + BATCH_ROWS] if digests is None
                     else pa.array(digests[start : start + BATCH_ROWS])}
            for table, rows in joined:
                taken = table.take(rows[start : start + BATCH_ROWS])
                chunk |= {name: taken.column(name) for name in taken.column_names if name not in chunk}
            # One record batch per BATCH_ROWS rows (not one per source chunk): opening reads each batch's header.
            arrays = [_column(chunk, name, type_) for name, type_ in columns.items()]
            writer.write_batch(pa.RecordBatch.from_arrays(
                [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in arrays], schema=schema))
    for number in range(len(joined)):
        os.remove(os.path.join(scratch, f"source-{number}.arrow"))


def as_digests(ids: pa.ChunkedArray) -> np.ndarray | None:
    """The ids as unsigned 64-bit integers when every one is 16 lower-case hex digits (step 1's URL digests, which
    read back the same); None otherwise."""
    strings = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if not len(strings) or strings.null_count:
        return None
    offsets = np.frombuffer(strings.buffers()[1], np.int32)[strings.offset : strings.offset + len(strings) + 1]
    if np.any(np.diff(offsets) != 16):
        return None
    nibbles = NIBBLE[np.frombuffer(strings.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]]
    if np.any(nibbles == 255):
        return None
    pairs = nibbles.reshape(-1, 8, 2)
    return np.ascontiguousarray((pairs[:, :, 0] << 4) | pairs[:, :, 1]).view(">u8").ravel().astype(np.uint64)


def as_hex(digests: np.ndarray) -> pa.Array:
    """as_digests undone: each integer as its 16 lower-case hex digits."""
    raw = np.asarray(digests, np.uint64).astype(">u8").view(np.uint8).reshape(-1, 8)
    text = np.empty((len(raw), 16), np.uint8)
    text[:, 0::2], text[:, 1::2] = HEX_DIGITS[raw >> 4], HEX_DIGITS[raw & 15]
    return pa.array(text.view("S16").ravel(), pa.binary()).cast(pa.string())


def _column(chunk: dict, name: str, type_: pa.DataType) -> pa.Array:
    rows = len(chunk["id"])
    return chunk[name] if name in chunk else pa.nulls(rows, type_)


def _mapped_copy(source: str, path: str) -> pa.Table:
    """source (Parquet) as an uncompressed Arrow file at path, memory-mapped."""
    parquet = pq.ParquetFile(source)
    with pa.OSFile(path, "wb") as sink, ipc.new_file(sink, parquet.schema_arrow) as writer:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            writer.write_batch(batch)
    return ipc.open_file(pa.memory_map(path)).read_all()


class ItemTable:
    """items.arrow opened memory-mapped: rows by index position in O(k)."""

    def __init__(self, path: str):
        self.reader = ipc.open_file(pa.memory_map(path))
        # write_items makes every batch but the last BATCH_ROWS long: only the last is read to know the length
        # (reading each batch's header cost 140 ms at 10M rows on a cold file).
        count = self.reader.num_record_batches
        last = self.reader.get_batch(count - 1).num_rows if count else 0
        self.starts = np.append(np.arange(count) * BATCH_ROWS, max(count - 1, 0) * BATCH_ROWS + last)
        self.digests = self.reader.schema.field("id").type == pa.uint64()  # ids stored as step 1's digests

    def __len__(self) -> int:
        return int(self.starts[-1])

    def rows(self, positions: list[int]) -> list[dict]:
        """The rows at these positions, as dicts, in the order asked."""
        return [self._batch_row(position) for position in positions]

    def ids(self) -> Sequence[str]:
        """The ids by position, each read when asked: a sample of k ids costs k rows, not the whole column."""
        return _Ids(self)

    def column(self, name: str) -> pa.ChunkedArray:
        """A whole column, memory-mapped (nothing is read until used; the ids of digests are converted whole)."""
        column = self.reader.read_all().column(name)
        if name == "id" and self.digests:
            return pa.chunked_array([as_hex(chunk.to_numpy()) for chunk in column.chunks], pa.string())
        return column

    def _batch_row(self, position: int) -> dict:
        batch = int(np.searchsorted(self.starts, position, side="right")) - 1
        row = self.reader.get_batch(batch).slice(position - int(self.starts[batch]), 1).to_pylist()[0]
        if self.digests:
            row["id"] = f"{row['id']:016x}"
        return row


class _Ids(Sequence):
    def __init__(self, table: ItemTable):
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, position: int) -> str:
        position = int(position) + (len(self) if position < 0 else 0)
        if not 0 <= position < len(self):
            raise IndexError(position)  # what ends iteration over a Sequence
        return self.table.rows([position])[0]["id"]
