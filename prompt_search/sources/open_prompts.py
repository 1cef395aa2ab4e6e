"""Step 1: an open-prompts CSV to a link list, a metadata table and a rejects file.

Outputs, the output set out_dir/metadata (published as one: see output_sets.py):
  img_links.txt     one image URL per line (the reference's link list)
  metadata.parquet  one row per kept CSV row: id, url, prompt and the generation's metadata
  rejects.csv       csv_line, reason, detail for every row that was skipped
"""

import csv
import gc
import io
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from prompt_search.errors import UserError
from prompt_search.layout import LINKS_FILE, METADATA_FILE, METADATA_SET, REJECTS_FILE
from prompt_search.output_sets import output_set
from prompt_search.sources import url_keys
from prompt_search.sources.csv_pieces import parse_in_order, pieces, worker_count
from prompt_search.sources.metadata_table import PARQUET_OPTIONS, SCHEMA
from prompt_search.sources.url_keys import KeptUrls, LateRows, Reject, without_duplicates
from prompt_search.sources.urls import url_digest
from prompt_search.storage import is_http_url

ROW_GROUP_ROWS = 65_536  # kept rows written to the Parquet file at once
PLACEHOLDERS = {"pending", "none", "null", "nan", "n/a", "undefined"}
# Rows scraped from Discord messages sometimes lost their prompt; the bot's message keeps it.
DREAM_PROMPT = re.compile(r'!dream\s+"\s*(.*?)\s*"', re.DOTALL)

Columns = tuple[int, int]  # the header's prompt column and raw_data column


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class Summary:
    rows: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)


def extract_links(csv_file: str, out_dir: str, workers: int = 1) -> Summary:
    """Stream csv_file into out_dir's link list, metadata table and rejects file, published as one set.

    workers > 1 parses pieces of the CSV in that many processes, -1 in one per CPU core; the outputs are the same.
    """
    if not os.path.isfile(csv_file):
        raise UserError(f"CSV file not found: {csv_file}")
    workers = worker_count(csv_file, workers)
    # Rows make no reference cycles, and the cyclic collector rescanning each chunk's records took a fifth of the time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _extract_links(csv_file, out_dir, workers)
    finally:
        if gc_was_enabled:
            gc.enable()


def _extract_links(csv_file: str, out_dir: str, workers: int) -> Summary:
    summary = Summary()
    kept_urls, late = KeptUrls(), None
    with (
        output_set(os.path.join(out_dir, METADATA_SET)) as folder,
        open(csv_file, "rb") as raw,
        open(os.path.join(folder, os.path.basename(LINKS_FILE)), "wb") as links,
        open(os.path.join(folder, os.path.basename(REJECTS_FILE)), "w", encoding="utf-8", newline="") as rejects_file,
        pq.ParquetWriter(os.path.join(folder, os.path.basename(METADATA_FILE)), SCHEMA, **PARQUET_OPTIONS) as metadata,
        tqdm(total=os.path.getsize(csv_file), unit="B", unit_scale=True, desc="rows", disable=None) as bar,
        ExitStack() as set_aside,  # closes LateRows' files should the run fail
    ):
        rejects = csv.writer(rejects_file)
        rejects.writerow(["csv_line", "reason", "detail"])
        kept = _KeptRows(metadata, links)
        columns = _header(raw.readline(), csv_file)
        bar.update(raw.tell())
        line = 2  # where the next piece starts
        for piece in parse_in_order(csv_file, pieces(raw), partial(parse_piece, columns=columns), workers):
            piece.number_lines_from(line)
            line += piece.lines
            if late is None and len(kept_urls) >= url_keys.MEMORY_KEYS:  # check the rest at the end (url_keys.py)
                late = set_aside.enter_context(LateRows(folder, SCHEMA, kept_urls))
            if late is None:
                table, rejected = _drop_duplicates(piece, kept_urls)
                kept.write(table)
                rejects.writerows(rejected)
            else:
                rejected = late.add(piece.table, piece.keys, piece.rejects)
            summary.rows += piece.rows
            summary.rejected.update(reason for _, reason, _ in rejected)
            bar.update(piece.size)
        if late is not None and (duplicates := late.finish(kept.write, rejects)):
            summary.rejected["duplicate_url"] += duplicates
        kept.flush()
        summary.kept = kept.rows
    return summary


class _KeptRows:
    """Kept rows into the metadata table, in row groups of exactly ROW_GROUP_ROWS rows but the last (so the file's
    layout depends on the rows alone, not on the tables they came in), and their URLs into the link list."""

    def __init__(self, metadata: pq.ParquetWriter, links):
        self.metadata, self.links, self.pending, self.rows = metadata, links, [], 0

    def write(self, table: pa.Table) -> None:
        _write_lines(self.links, table["url"])
        self.rows += len(table)
        self.pending.append(table)
        pending = sum(map(len, self.pending))
        if pending >= ROW_GROUP_ROWS:
            rows = pa.concat_tables(self.pending)
            whole = pending - pending % ROW_GROUP_ROWS
            self.metadata.write_table(rows.slice(0, whole), row_group_size=ROW_GROUP_ROWS)
            self.pending = [rows.slice(whole)]

    def flush(self) -> None:
        """Write the last, shorter row group."""
        if sum(map(len, self.pending)):
            self.metadata.write_table(pa.concat_tables(self.pending))
        self.pending = []


@dataclass
class ParsedPiece:
    rows: int  # CSV rows read
    lines: int  # physical lines read
    size: int  # bytes
    rejects: list[Reject]
    keys: np.ndarray  # url key of each row of table
    table: pa.Table  # the rows parse_row took, in SCHEMA

    def number_lines_from(self, first_line: int) -> None:
        """Turn line numbers counted from the piece's start (0) into the CSV's, the piece starting at first_line."""
        where = SCHEMA.get_field_index("csv_line")
        self.table = self.table.set_column(where, SCHEMA.field(where), pc.add(self.table["csv_line"], first_line))
        self.rejects = [(line + first_line, reason, detail) for line, reason, detail in self.rejects]


def parse_piece(data: bytes, columns: Columns) -> ParsedPiece:
    """Parse one piece of the CSV (whole rows) into SCHEMA records and rejects, lines counted from the piece's start."""
    text = _TextReader(io.BytesIO(data))
    lines, records, rejects = [], [], []
    for line, prompt, raw_data in _read_rows(text, columns):  # one row at a time: a small working set is faster
        try:
            if isinstance(raw_data, Rejected):
                raise raw_data
            records.append(parse_row(prompt, raw_data))
            lines.append(line)
        except Rejected as rejected:
            rejects.append((line, rejected.reason, rejected.detail[:200]))
    digests = [url_digest(record[0]) for record in records]
    keys = np.frombuffer(b"".join(digests), dtype=">u8").astype(np.uint64)
    values = zip(*records, strict=True) if records else [()] * (len(SCHEMA) - 2)
    arrays = [pa.array([digest.hex() for digest in digests], pa.string())]
    arrays += [pa.array(column, kind) for column, kind in zip(values, SCHEMA.types[1:-1], strict=True)]
    arrays.append(pa.array(lines, pa.int64()))
    table = pa.Table.from_arrays(arrays, schema=SCHEMA)
    return ParsedPiece(len(records) + len(rejects), text.lines, len(data), rejects, keys, table)


Row = tuple[int, str, "str | Rejected"]  # (line from the piece's start, prompt, raw_data or why the row can't be read)


def _read_rows(text: "_TextReader", columns: Columns) -> Iterator[Row]:
    """The rows read by the csv module, strict: a row with broken quoting is rejected, not misread."""
    prompt_col, raw_col = columns
    reader = csv.reader(text, strict=True)
    while True:
        line = text.lines
        bad_lines = text.bad_lines
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield line, "", Rejected("malformed_row", str(error))
            continue
        if text.bad_lines != bad_lines:
            yield line, "", Rejected("invalid_utf8", "bytes that are not UTF-8")
        elif len(fields) <= max(prompt_col, raw_col):
            yield line, "", Rejected("malformed_row", f"{len(fields)} fields")
        else:
            yield line, fields[prompt_col], fields[raw_col]


class _TextReader:
    """Decode the CSV line by line; bad UTF-8 is counted in bad_lines (its row is rejected), not fatal."""

    def __init__(self, raw):
        self.raw = raw
        self.lines = 0  # read so far
        self.bad_lines = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.raw.readline()
        if not line:
            raise StopIteration
        self.lines += 1
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            self.bad_lines += 1
            return line.decode("utf-8", errors="replace")


def _header(line: bytes, csv_file: str) -> Columns:
    if not line.strip():
        raise UserError(f"{csv_file} is empty; expected a header with prompt and raw_data")
    header = next(csv.reader([line.decode("utf-8", errors="replace")]))
    header = [name.strip().lstrip("\ufeff") for name in header]
    if "prompt" not in header or "raw_data" not in header:
        raise UserError(f"{csv_file}: the header must name prompt and raw_data columns, got {header}")
    return header.index("prompt"), header.index("raw_data")


def parse_row(prompt: str, raw_data: str) -> tuple:
    """One CSV row to a metadata record (SCHEMA's values from url to modifiers), or Rejected with the reason."""
    try:
        raw = orjson.loads(raw_data)
    except orjson.JSONDecodeError as error:
        raise Rejected("invalid_json", str(error)) from None
    if type(raw) is not dict:
        raise Rejected("invalid_json", "raw_data is not a JSON object")
    discord = raw.get("raw_discord_data")
    get = discord.get if type(discord) is dict else {}.get
    discord_uri = get("image_uri")
    url = choose_url(raw.get("image_uri"), discord_uri)
    prompt = prompt.strip() or _prompt_from_message(get("content"))
    modifiers = raw.get("modifiers")
    if type(modifiers) is not list:
        modifiers = None
    elif not set(map(type, modifiers)) <= {str}:
        modifiers = [m for m in modifiers if type(m) is str]
    thumbnail_uri = raw.get("thumbnail_uri")
    width, height, seed, cfg_scale, num_steps, num_generations, is_grid, timestamp = map(get, _DISCORD_FIELDS)
    return (
        url,
        prompt,
        _http_url_or_none(discord_uri),
        _http_url_or_none(thumbnail_uri),
        _int(width, INT32),
        _int(height, INT32),
        _int(seed, SEEDS),
        float(cfg_scale) if type(cfg_scale) is float or type(cfg_scale) is int else None,
        _int(num_steps, INT32),
        _int(num_generations, INT32),
        None if _int(is_grid, INT32) is None else bool(is_grid),
        _int(timestamp, TIMESTAMPS),
        modifiers,
    )


def choose_url(mirror_uri: object, discord_uri: object) -> str:
    """The URL to download: krea's own copy (top-level image_uri) when the row has one, else Discord's.

    Discord has refused unsigned attachment links since late 2023; krea's storage copy is the one
    that can still answer, so it wins. Most rows only have the Discord link ("PENDING" upstream).
    """
    for uri in (mirror_uri, discord_uri):
        if type(uri) is str and is_http_url(url := uri.strip()):
            return _lower_scheme(url)
    candidates = [u.strip() for u in (mirror_uri, discord_uri) if isinstance(u, str) and u.strip()]
    real = [u for u in candidates if u.lower() not in PLACEHOLDERS]
    if real:
        raise Rejected("non_http_url", real[0])
    if candidates:
        raise Rejected("placeholder_url", candidates[0])
    raise Rejected("no_url")


def _lower_scheme(url: str) -> str:
    """url with its scheme in lower case, the one spelling of a scheme: HTTP://x and http://x are one URL, so they get
    one id (the digest of the URL as stored) and the second is a duplicate."""
    scheme, _, rest = url.partition(":")
    return f"{scheme.lower()}:{rest}"


def _http_url_or_none(uri: object) -> str | None:
    return _lower_scheme(uri) if is_http_url(uri) else None


def _prompt_from_message(content: object) -> str:
    match = DREAM_PROMPT.search(content) if isinstance(content, str) else None
    return " ".join(match.group(1).split()) if match else ""


INT32 = (-(1 << 31), 1 << 31)
SEEDS = (0, 1 << 64)  # the seed column's range (uint64); a negative seed names no generation
TIMESTAMPS = (-62135596800, 253402300800)  # seconds of years 1..9999: what datetime and Parquet (in ms) can hold
_DISCORD_FIELDS = ("width", "height", "seed", "cfg_scale", "num_step", "num_generations", "is_grid", "timestamp")


def _int(value: object, bounds: tuple[int, int]) -> int | None:
    """An integer (not a bool) that fits its column, else None: one odd value must not end the run."""
    return value if type(value) is int and bounds[0] <= value < bounds[1] else None


def _drop_duplicates(piece: ParsedPiece, kept_urls: KeptUrls) -> tuple[pa.Table, list[Reject]]:
    """The piece's rows whose URL was not kept before (in this piece or an earlier one), and the piece's rejects,
    duplicates included, in line order."""
    return without_duplicates(piece.table, ~kept_urls.add(piece.keys), piece.rejects)


def _write_lines(out, strings: pa.ChunkedArray) -> None:
    """Write each string and a line end, straight from Arrow's buffers (a Python string for each costs 7x the time)."""
    for chunk in pc.binary_join_element_wise(strings, "\n", "").chunks:
        if not len(chunk):
            continue
        offsets = np.frombuffer(chunk.buffers()[1], np.int32)
        out.write(chunk.buffers()[2][offsets[chunk.offset] : offsets[chunk.offset + len(chunk)]])


def print_summary(summary: Summary, csv_file: str, out_dir: str) -> None:
    print(f"{csv_file}: {summary.rows} rows, {summary.kept} kept, {sum(summary.rejected.values())} rejected")
    for reason, count in summary.rejected.most_common():
        print(f"  {reason}: {count}")
    for name in (LINKS_FILE, METADATA_FILE, REJECTS_FILE):
        print(f"wrote {os.path.join(out_dir, name)}")
    sys.stdout.flush()
