"""Step 1: an open-prompts CSV to a link list, a metadata table and a rejects file.

Outputs, in out_dir:
  img_links.txt     one image URL per line (the reference's link list)
  metadata.parquet  one row per kept CSV row: id, url, prompt and the generation's metadata
  rejects.csv       csv_line, reason, detail for every row that was skipped
"""

import csv
import gc
import hashlib
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from prompt_search.cli import UserError
from prompt_search.files import atomic_path, is_http_url

LINKS_FILE = "img_links.txt"
METADATA_FILE = "metadata.parquet"
REJECTS_FILE = "rejects.csv"

CHUNK_ROWS = 50_000  # rows held in memory between writes: bounds memory whatever the CSV size
PLACEHOLDERS = {"pending", "none", "null", "nan", "n/a", "undefined"}
# Rows scraped from Discord messages sometimes lost their prompt; the bot's message keeps it.
DREAM_PROMPT = re.compile(r'!dream\s+"\s*(.*?)\s*"', re.DOTALL)

SCHEMA = pa.schema([
    ("id", pa.string()),  # blake2b(url) with an 8-byte digest, as 16 hex digits: stable whatever the row order
    ("url", pa.string()),  # the image downloaded (see choose_url)
    ("prompt", pa.string()),
    ("discord_url", pa.string()),
    ("thumbnail_url", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("seed", pa.int64()),
    ("cfg_scale", pa.float32()),
    ("num_steps", pa.int32()),
    ("num_generations", pa.int32()),
    ("is_grid", pa.bool_()),
    ("timestamp", pa.timestamp("s", tz="UTC")),
    ("modifiers", pa.list_(pa.string())),
    ("csv_line", pa.int64()),  # line in the CSV where the row starts
])


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class Summary:
    rows: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)


def extract_links(csv_file: str, out_dir: str) -> Summary:
    """Stream csv_file into out_dir's link list, metadata table and rejects file, replacing them atomically."""
    if not os.path.isfile(csv_file):
        raise UserError(f"CSV file not found: {csv_file}")
    # Rows make no reference cycles, and the cyclic collector rescanning each chunk's records took a fifth of the time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _extract_links(csv_file, out_dir)
    finally:
        if gc_was_enabled:
            gc.enable()


def _extract_links(csv_file: str, out_dir: str) -> Summary:
    summary = Summary()
    seen = np.empty(0, dtype=np.uint64)  # sorted url keys of kept rows, 8 bytes a row
    with (
        atomic_path(os.path.join(out_dir, LINKS_FILE)) as links_tmp,
        atomic_path(os.path.join(out_dir, METADATA_FILE)) as metadata_tmp,
        atomic_path(os.path.join(out_dir, REJECTS_FILE)) as rejects_tmp,
        open(csv_file, "rb") as raw,
        open(links_tmp, "w", encoding="utf-8") as links,
        open(rejects_tmp, "w", encoding="utf-8", newline="") as rejects_file,
        pq.ParquetWriter(metadata_tmp, SCHEMA) as metadata,
        tqdm(total=os.path.getsize(csv_file), unit="B", unit_scale=True, desc="rows", disable=None) as bar,
    ):
        text = _TextReader(raw)
        rows = csv.reader(text, strict=True)  # strict: a row with broken quoting is rejected, not misread
        rejects = csv.writer(rejects_file)
        rejects.writerow(["csv_line", "reason", "detail"])
        columns = _header(rows, csv_file)
        chunk: list[tuple[int, tuple]] = []  # (csv line, parse_row's record)
        while True:
            line = rows.line_num + 1
            bad_lines = text.bad_lines
            try:
                fields = next(rows)
            except StopIteration:
                break
            except csv.Error as error:
                fields = Rejected("malformed_row", str(error))
            if text.bad_lines != bad_lines:
                fields = Rejected("invalid_utf8", "bytes that are not UTF-8")
            summary.rows += 1
            try:
                if isinstance(fields, Rejected):
                    raise fields
                chunk.append((line, parse_row(fields, columns)))
            except Rejected as rejected:
                summary.rejected[rejected.reason] += 1
                rejects.writerow([line, rejected.reason, rejected.detail[:200]])
            if len(chunk) == CHUNK_ROWS:
                seen = _write_chunk(chunk, seen, links, metadata, rejects, summary)
                chunk = []
                bar.update(raw.tell() - bar.n)
        seen = _write_chunk(chunk, seen, links, metadata, rejects, summary)
        bar.update(raw.tell() - bar.n)
    return summary


class _TextReader:
    """Decode the CSV line by line; bad UTF-8 is counted in bad_lines (its row is rejected), not fatal."""

    def __init__(self, raw):
        self.raw = raw
        self.bad_lines = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.raw.readline()
        if not line:
            raise StopIteration
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            self.bad_lines += 1
            return line.decode("utf-8", errors="replace")


def _header(rows, csv_file: str) -> tuple[int, int]:
    try:
        header = next(rows)
    except StopIteration:
        raise UserError(f"{csv_file} is empty; expected a header with prompt and raw_data") from None
    header = [name.strip().lstrip("\ufeff") for name in header]
    if "prompt" not in header or "raw_data" not in header:
        raise UserError(f"{csv_file}: the header must name prompt and raw_data columns, got {header}")
    return header.index("prompt"), header.index("raw_data")


def parse_row(fields: list[str], columns: tuple[int, int]) -> tuple:
    """One CSV row to a metadata record (SCHEMA's values from url to modifiers), or Rejected with the reason."""
    prompt_col, raw_col = columns
    if len(fields) <= max(columns):
        raise Rejected("malformed_row", f"{len(fields)} fields")
    try:
        raw = orjson.loads(fields[raw_col])
    except orjson.JSONDecodeError as error:
        raise Rejected("invalid_json", str(error)) from None
    if not isinstance(raw, dict):
        raise Rejected("invalid_json", "raw_data is not a JSON object")
    discord = raw.get("raw_discord_data")
    get = discord.get if isinstance(discord, dict) else {}.get
    discord_uri = get("image_uri")
    url = choose_url(raw.get("image_uri"), discord_uri)
    prompt = fields[prompt_col].strip() or _prompt_from_message(get("content"))
    modifiers = raw.get("modifiers")
    if not isinstance(modifiers, list):
        modifiers = None
    elif not set(map(type, modifiers)) <= {str}:
        modifiers = [m for m in modifiers if isinstance(m, str)]
    is_grid = _int(get("is_grid"))
    return (
        url,
        prompt,
        _http_or_none(discord_uri),
        _http_or_none(raw.get("thumbnail_uri")),
        _int(get("width")),
        _int(get("height")),
        _int(get("seed"), INT64),
        _number(get("cfg_scale")),
        _int(get("num_step")),
        _int(get("num_generations")),
        None if is_grid is None else bool(is_grid),
        _timestamp(get("timestamp")),
        modifiers,
    )


def choose_url(mirror_uri: object, discord_uri: object) -> str:
    """The URL to download: krea's own copy (top-level image_uri) when the row has one, else Discord's.

    Discord has refused unsigned attachment links since late 2023; krea's storage copy is the one
    that can still answer, so it wins. Most rows only have the Discord link ("PENDING" upstream).
    """
    candidates = [u.strip() for u in (mirror_uri, discord_uri) if isinstance(u, str)]
    for url in candidates:
        if is_http_url(url):
            return url
    candidates = [u for u in candidates if u]
    real = [u for u in candidates if u.lower() not in PLACEHOLDERS]
    if real:
        raise Rejected("non_http_url", real[0])
    if candidates:
        raise Rejected("placeholder_url", candidates[0])
    raise Rejected("no_url")


def _prompt_from_message(content: object) -> str:
    match = DREAM_PROMPT.search(content) if isinstance(content, str) else None
    return " ".join(match.group(1).split()) if match else ""


def _http_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and is_http_url(value) else None


INT32 = (-(1 << 31), 1 << 31)
INT64 = (-(1 << 63), 1 << 63)
TIMESTAMPS = (-62135596800, 253402300800)  # seconds of years 1..9999: what datetime and Parquet (in ms) can hold


def _int(value: object, bounds: tuple[int, int] = INT32) -> int | None:
    """An integer (not a bool) that fits its column, else None: one odd value must not end the run."""
    return value if type(value) is int and bounds[0] <= value < bounds[1] else None


def _timestamp(value: object) -> int | None:
    return _int(value, TIMESTAMPS)


def _number(value: object) -> float | None:
    return float(value) if type(value) is float or type(value) is int else None


def _write_chunk(chunk, seen, links, metadata, rejects, summary) -> np.ndarray:
    """Drop URLs already kept (in this chunk or before), write the rest; return the new seen keys."""
    if not chunk:
        return seen
    digests = [_url_digest(record[0]) for _, record in chunk]
    keys = np.frombuffer(b"".join(digests), dtype=">u8").astype(np.uint64)
    _, first = np.unique(keys, return_index=True)
    fresh = np.zeros(len(keys), dtype=bool)
    fresh[first] = True
    if len(seen):  # binary search in the sorted keys: no temporary the size of `seen`, unlike np.isin
        fresh &= seen[np.minimum(np.searchsorted(seen, keys), len(seen) - 1)] != keys
    if not fresh.all():
        for (line, record), is_fresh in zip(chunk, fresh, strict=True):
            if not is_fresh:
                summary.rejected["duplicate_url"] += 1
                rejects.writerow([line, "duplicate_url", record[0]])
        chunk = [row for row, is_fresh in zip(chunk, fresh, strict=True) if is_fresh]
        digests = [digest for digest, is_fresh in zip(digests, fresh, strict=True) if is_fresh]
    summary.kept += len(chunk)
    lines, records = zip(*chunk, strict=True) if chunk else ((), ())
    columns = zip(*records, strict=True) if records else [()] * (len(SCHEMA) - 2)
    arrays = [pa.array([digest.hex() for digest in digests], pa.string())]
    arrays += [pa.array(column, kind) for column, kind in zip(columns, SCHEMA.types[1:-1], strict=True)]
    arrays.append(pa.array(lines, pa.int64()))
    links.writelines(record[0] + "\n" for record in records)
    metadata.write_table(pa.Table.from_arrays(arrays, schema=SCHEMA))
    new = np.sort(keys[fresh])
    return np.insert(seen, np.searchsorted(seen, new), new)


def _url_digest(url: str) -> bytes:
    return hashlib.blake2b(url.encode(), digest_size=8).digest()


def url_id(url: str) -> str:
    """The id step 1 gives the row of this URL; lets images downloaded from img_links.txt find their row."""
    return _url_digest(url).hex()


def print_summary(summary: Summary, csv_file: str, out_dir: str) -> None:
    print(f"{csv_file}: {summary.rows} rows, {summary.kept} kept, {sum(summary.rejected.values())} rejected")
    for reason, count in summary.rejected.most_common():
        print(f"  {reason}: {count}")
    for name in (LINKS_FILE, METADATA_FILE, REJECTS_FILE):
        print(f"wrote {os.path.join(out_dir, name)}")
    sys.stdout.flush()
