import csv
import datetime
import gc
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import children_of, is_running, serve, write_open_prompts_csv

import config
from prompt_search.errors import UserError
from prompt_search.layout import LINKS_FILE, METADATA_FILE, REJECTS_FILE
from prompt_search.sources import csv_pieces, url_keys
from prompt_search.sources import open_prompts as links
from prompt_search.sources.open_prompts import extract_links
from prompt_search.sources.urls import url_id
from prompt_search.storage import is_http_url

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "extract_img_links_from_csv.py"
OUTPUTS = (LINKS_FILE, METADATA_FILE, REJECTS_FILE)
COLUMNS = [
    "id", "url", "prompt", "discord_url", "thumbnail_url", "width", "height", "seed", "cfg_scale",
    "num_steps", "num_generations", "is_grid", "timestamp", "modifiers", "csv_line",
]

# What 1k.csv holds, established by reading it with the csv and json modules (see test_independent_reading).
ROWS_1K = 998
DUPLICATE_LINE_1K = 70  # same Discord URL as line 69, both without a krea copy
KREA_ROWS_1K = 90  # rows whose top-level image_uri is krea's storage copy
EMPTY_PROMPT_LINES_1K = [107, 114, 160, 362, 626, 696, 810, 813, 817]
MULTI_LINE_ROW_1K = (349, 351)  # the one row whose prompt holds newlines: physical lines 349 to 351
LAST_LINE_1K = 1001
THUMBNAIL_ONLY_ROWS_1K = 2  # rows with a krea thumbnail but "PENDING" as krea's copy of the image


SAMPLE_ROWS = 2500  # about 1 MB, like 1k.csv


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory) -> Path:
    """A generated open-prompts CSV: quoted, multi-line and non-ASCII prompts, and one duplicate URL (the last row)."""
    rows = [(f'robot {i}, "quoted" café' + ("\nsecond line\nthird" if i % 97 == 0 else ""),
             f"https://cdn.discordapp.com/attachments/{i}/{i}/img.png") for i in range(SAMPLE_ROWS - 1)]
    rows.append(("the same URL as the first row", rows[0][1]))
    return write_open_prompts_csv(tmp_path_factory.mktemp("sample") / "sample.csv", rows)


# --- the real data (csv_1k: a skip unless $PROMPT_SEARCH_DATA holds it) ------------------------------


@pytest.fixture(scope="module")
def out_1k(csv_1k, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    summary = extract_links(str(csv_1k), str(out))
    return summary, out, pq.read_table(out / METADATA_FILE).to_pylist()


def read_csv_rows(path):
    """(first physical line, prompt, raw_data as parsed JSON) for each row: the test's own reading."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        assert next(reader) == ["prompt", "raw_data"]
        rows = []
        while True:
            line = reader.line_num + 1
            try:
                prompt, raw = next(reader)
            except StopIteration:
                return rows
            rows.append((line, prompt, json.loads(raw)))


def test_independent_reading(csv_1k):
    """The constants above, from the CSV itself."""
    rows = read_csv_rows(csv_1k)
    assert len(rows) == ROWS_1K
    assert rows[-1][0] == LAST_LINE_1K
    starts = [line for line, _, _ in rows]
    assert [(a, b - 1) for a, b in zip(starts, starts[1:], strict=False) if b - a > 1] == [MULTI_LINE_ROW_1K]
    assert sum(raw["image_uri"].startswith("https://") for _, _, raw in rows) == KREA_ROWS_1K
    assert all(raw["image_uri"] == "PENDING" for _, _, raw in rows if not raw["image_uri"].startswith("https://"))
    assert [line for line, prompt, _ in rows if not prompt.strip()] == EMPTY_PROMPT_LINES_1K
    discord = [raw["raw_discord_data"]["image_uri"] for _, _, raw in rows if raw["image_uri"] == "PENDING"]
    thumbnails = [raw["thumbnail_uri"] for _, _, raw in rows if raw["image_uri"] == "PENDING"]
    assert len(thumbnails) - thumbnails.count("PENDING") == THUMBNAIL_ONLY_ROWS_1K
    assert len(discord) - len(set(discord)) == 1


def test_1k_counts(out_1k):
    summary, out, _ = out_1k
    assert (summary.rows, summary.kept) == (ROWS_1K, ROWS_1K - 1)
    assert dict(summary.rejected) == {"duplicate_url": 1}


def test_1k_rejects_file(out_1k, csv_1k):
    _, out, _ = out_1k
    with open(out / REJECTS_FILE, newline="", encoding="utf-8") as f:
        rejects = list(csv.reader(f))
    by_line = {line: raw for line, _, raw in read_csv_rows(csv_1k)}
    url = by_line[DUPLICATE_LINE_1K]["raw_discord_data"]["image_uri"]
    assert url == by_line[DUPLICATE_LINE_1K - 1]["raw_discord_data"]["image_uri"]
    assert rejects == [["csv_line", "reason", "detail"], [str(DUPLICATE_LINE_1K), "duplicate_url", url]]


def test_1k_url_sources(out_1k):
    _, _, table = out_1k
    krea = [r for r in table if "supabase.co/storage/" in r["url"]]
    discord = [r for r in table if r["url"].startswith("https://cdn.discordapp.com/attachments/")]
    assert (len(krea), len(discord)) == (KREA_ROWS_1K, ROWS_1K - 1 - KREA_ROWS_1K)
    assert all(r["discord_url"].startswith("https://cdn.discordapp.com/") for r in table)
    assert all(r["thumbnail_url"].endswith("_thumbnail.webp") for r in krea)
    # Two rows have krea's thumbnail but no krea copy of the image; the others' thumbnail is "PENDING" upstream.
    assert sum(r["thumbnail_url"] is not None for r in discord) == THUMBNAIL_ONLY_ROWS_1K


def test_1k_url_choice_against_csv(out_1k, csv_1k):
    _, _, table = out_1k
    by_line = {line: raw for line, _, raw in read_csv_rows(csv_1k)}
    for record in table:
        raw = by_line[record["csv_line"]]
        expected = raw["image_uri"] if raw["image_uri"] != "PENDING" else raw["raw_discord_data"]["image_uri"]
        assert record["url"] == expected


def test_1k_empty_prompts_recovered_from_the_bot_message(out_1k):
    _, _, table = out_1k
    by_line = {r["csv_line"]: r for r in table}
    assert by_line[114]["prompt"] == (
        "Doctor Manhattan as a wolf meditating in outer space, stars, artstation, digital art, spiritual, "
        "award winning, colourful"
    )
    assert by_line[696]["prompt"] == "stunning fantasy soap bubbles"
    # The message quotes this one with newlines and a double space; they become single spaces.
    assert by_line[107]["prompt"].startswith("little wood bridge painting of Atlantis zeus statue")
    assert "tower ivy plant" in by_line[107]["prompt"] and by_line[107]["prompt"].endswith("global illumination")
    assert all(by_line[line]["prompt"] for line in EMPTY_PROMPT_LINES_1K)
    assert all(r["prompt"] and r["prompt"] == r["prompt"].strip() for r in table)


def test_1k_csv_lines_follow_physical_lines(out_1k):
    _, _, table = out_1k
    lines = [r["csv_line"] for r in table]
    first, last = MULTI_LINE_ROW_1K
    expected = [n for n in range(2, LAST_LINE_1K + 1) if n != DUPLICATE_LINE_1K and not first < n <= last]
    assert lines == expected
    assert max(lines) == LAST_LINE_1K
    by_line = {r["csv_line"]: r for r in table}
    assert by_line[first]["prompt"].startswith("Statue of liberty in the New York")  # newlines around it stripped
    assert by_line[first]["prompt"].endswith("rossdraws global illumination")


def test_1k_links_file_is_one_url_per_kept_row_in_table_order(out_1k):
    _, out, table = out_1k
    text = (out / LINKS_FILE).read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert text.splitlines() == [r["url"] for r in table]


def test_1k_ids(out_1k):
    _, _, table = out_1k
    ids = [r["id"] for r in table]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 16 and set(i) <= set("0123456789abcdef") for i in ids)
    assert all(r["id"] == hashlib.blake2b(r["url"].encode(), digest_size=8).hexdigest() for r in table)
    assert all(url_id(r["url"]) == r["id"] for r in table)


def test_1k_metadata_columns(out_1k):
    _, out, _ = out_1k
    schema = pq.read_schema(out / METADATA_FILE)
    assert schema.names == COLUMNS


def expected_record(line, prompt, raw):
    discord = raw["raw_discord_data"]
    return {
        "id": hashlib.blake2b(
            (raw["image_uri"] if raw["image_uri"] != "PENDING" else discord["image_uri"]).encode(), digest_size=8
        ).hexdigest(),
        "url": raw["image_uri"] if raw["image_uri"] != "PENDING" else discord["image_uri"],
        "prompt": prompt,
        "discord_url": discord["image_uri"],
        "thumbnail_url": None if raw["thumbnail_uri"] == "PENDING" else raw["thumbnail_uri"],
        "width": discord["width"],
        "height": discord["height"],
        "seed": discord.get("seed"),
        "cfg_scale": discord.get("cfg_scale"),
        "num_steps": discord.get("num_step"),
        "num_generations": discord.get("num_generations"),
        "is_grid": None if "is_grid" not in discord else bool(discord["is_grid"]),
        "timestamp": None if "timestamp" not in discord
        else datetime.datetime.fromtimestamp(discord["timestamp"], datetime.timezone.utc),
        "modifiers": raw["modifiers"],
        "csv_line": line,
    }


def test_1k_rows_fully_against_the_csv(out_1k, csv_1k):
    _, _, table = out_1k
    by_line = {r["csv_line"]: r for r in table}
    rows = {line: (line, prompt, raw) for line, prompt, raw in read_csv_rows(csv_1k)}
    discord_row = expected_record(*rows[2])  # a Discord-only row with full generation metadata
    assert discord_row["seed"] == 556046175 and discord_row["is_grid"] is False  # the row is the one meant
    assert by_line[2] == discord_row
    krea_line = next(line for line, (_, _, raw) in rows.items() if raw["image_uri"] != "PENDING")
    krea_row = expected_record(*rows[krea_line])  # a row with krea's copy and thumbnail, and less metadata
    assert krea_row["url"].startswith("https://") and krea_row["seed"] is None
    assert by_line[krea_line] == krea_row


# --- generated CSVs with bad rows -----------------------------------------------------------


def raw_json(mirror="PENDING", discord=None, **extra):
    data = {"image_uri": mirror, "modifiers": ["m1", "m2"], "thumbnail_uri": "PENDING", "raw_discord_data": {}}
    if discord is not None:
        data["raw_discord_data"]["image_uri"] = discord
    data["raw_discord_data"].update(extra)
    return json.dumps(data)


def csv_line(*fields):
    """One row as the csv module writes it, as bytes."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(fields)
    return buffer.getvalue().encode("utf-8")


URL_A = "https://cdn.discordapp.com/attachments/1/2/a.png"
URL_B_KREA = "https://example.supabase.co/storage/v1/object/public/b.png"
URL_C = "https://cdn.discordapp.com/attachments/1/2/c.png"
URL_D = "https://cdn.discordapp.com/attachments/1/2/d.png"

# (bytes of one CSV row, the reason it is rejected or None when kept); its line number follows from its position.
BAD_ROWS = [
    (csv_line("good a", raw_json(discord=URL_A, width=512, seed=7, timestamp=1660001285)), None),
    (csv_line("bad json", '{"image_uri": "https://x/y.png",'), "invalid_json"),
    (csv_line("json list", '["https://x/y.png"]'), "invalid_json"),
    (csv_line("no url", json.dumps({"modifiers": []})), "no_url"),
    (csv_line("empty url", raw_json(mirror="", discord="  ")), "no_url"),
    (csv_line("ftp url", raw_json(discord="ftp://example.com/a.png")), "non_http_url"),
    (csv_line("javascript url", raw_json(mirror="javascript:alert(1)")), "non_http_url"),
    (csv_line("pending", raw_json(mirror="PENDING", discord="PENDING")), "placeholder_url"),
    (csv_line("good b", raw_json(mirror=URL_B_KREA, discord=URL_C)), None),
    (csv_line("same url as a", raw_json(discord=URL_A)), "duplicate_url"),
    (csv_line("only a prompt"), "malformed_row"),
    (b'"broken "quoting" here",' + csv_line(raw_json(discord=URL_D)), "malformed_row"),
    (b"caf\xe9 latin-1 prompt," + csv_line(raw_json(discord=URL_D)), "invalid_utf8"),
    (csv_line("url with bad bytes", raw_json(discord=URL_D + "X")).replace(b"X", b"\xff\xfe"), "invalid_utf8"),
    (csv_line("good multi\nline\nprompt", raw_json(discord=URL_D)), None),
    (csv_line("good odd ints", raw_json(discord=URL_C + "?2", width=2**40, seed=2**64, timestamp=2**62)), None),
    (csv_line("same url as b's krea copy", raw_json(discord=URL_B_KREA)), "duplicate_url"),
    (b'"never closed,' + csv_line(raw_json(discord=URL_C + "?4")), "malformed_row"),  # a quote then a {
    (b'"never closed till the end of the file,{}\n', "malformed_row"),
]


def write_rows(path, rows, header=b"prompt,raw_data\n"):
    """Write header + rows; return the first physical line of each row."""
    lines, line = [], 2
    for data, _ in rows:
        lines.append(line)
        line += data.count(b"\n")
    path.write_bytes(header + b"".join(data for data, _ in rows))
    return lines


def read_rejects(out):
    with open(out / REJECTS_FILE, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        assert next(reader) == ["csv_line", "reason", "detail"]
        return [(int(line), reason, detail) for line, reason, detail in reader]


def count_pools(monkeypatch):
    """The process pools extract_links starts, from now on."""
    pools, real = [], csv_pieces.ProcessPoolExecutor

    def pool(*args, **kwargs):
        pools.append(real(*args, **kwargs))
        return pools[-1]

    monkeypatch.setattr(csv_pieces, "ProcessPoolExecutor", pool)
    return pools


# Pieces of the default size (the whole file), of about one row (1 byte: the read doubles until it holds a row end),
# of a few rows; duplicates are then found within a piece and across pieces. 2 workers parse in other processes.
@pytest.mark.parametrize(("chunk_bytes", "workers"), [(csv_pieces.CHUNK_BYTES, 1), (1, 1), (300, 1), (300, 2)])
def test_bad_rows_are_skipped_counted_and_written_to_rejects(tmp_path, monkeypatch, chunk_bytes, workers):
    monkeypatch.setattr(csv_pieces, "CHUNK_BYTES", chunk_bytes)
    source = tmp_path / "bad.csv"
    lines = write_rows(source, BAD_ROWS)
    pools = count_pools(monkeypatch)
    summary = extract_links(str(source), str(tmp_path / "out"), workers)
    assert len(pools) == (workers > 1)

    expected_rejects = [(line, reason) for line, (_, reason) in zip(lines, BAD_ROWS, strict=True) if reason]
    kept_lines = [line for line, (_, reason) in zip(lines, BAD_ROWS, strict=True) if reason is None]
    assert summary.rows == len(BAD_ROWS)
    assert summary.kept == len(kept_lines) == 4
    counts = {}
    for _, reason in expected_rejects:
        counts[reason] = counts.get(reason, 0) + 1
    assert dict(summary.rejected) == counts
    assert set(counts) == {
        "invalid_json", "no_url", "non_http_url", "placeholder_url", "duplicate_url", "malformed_row", "invalid_utf8",
    }

    rejects = read_rejects(tmp_path / "out")
    assert sorted((line, reason) for line, reason, _ in rejects) == expected_rejects
    details = {line: detail for line, _, detail in rejects}
    assert details[lines[5]] == "ftp://example.com/a.png"
    assert details[lines[6]] == "javascript:alert(1)"
    assert details[lines[7]] == "PENDING"
    assert details[lines[9]] == URL_A and details[lines[16]] == URL_B_KREA

    table = pq.read_table(tmp_path / "out" / METADATA_FILE).to_pylist()
    assert [r["csv_line"] for r in table] == kept_lines
    assert [r["url"] for r in table] == [URL_A, URL_B_KREA, URL_D, URL_C + "?2"]
    assert (tmp_path / "out" / LINKS_FILE).read_text().splitlines() == [r["url"] for r in table]
    assert table[0]["prompt"] == "good a" and table[0]["modifiers"] == ["m1", "m2"]
    assert (table[0]["width"], table[0]["seed"]) == (512, 7)
    assert table[0]["timestamp"] == datetime.datetime(2022, 8, 8, 23, 28, 5, tzinfo=datetime.timezone.utc)
    assert table[1]["discord_url"] == URL_C
    assert table[2]["prompt"] == "good multi\nline\nprompt"
    # Values that do not fit their column are dropped, not fatal.
    assert (table[3]["width"], table[3]["seed"], table[3]["timestamp"]) == (None, None, None)
    assert not list((tmp_path / "out").glob("*.partial"))


def test_schemes_in_capitals_are_http_and_stored_in_lower_case(tmp_path):
    """Schemes are case-insensitive: HTTP://x is kept as http://x, with http://x's id, and is a duplicate of it."""
    rows = [
        (csv_line("capitals", raw_json(discord="HTTP://cdn.discordapp.com/attachments/1/2/Up.PNG")), None),
        (csv_line("mixed", raw_json(mirror="Https://example.supabase.co/b.png", discord="hTTpS://cdn.x/c.png")), None),
        (csv_line("same as capitals", raw_json(discord="http://cdn.discordapp.com/attachments/1/2/Up.PNG")),
         "duplicate_url"),
        (csv_line("not http", raw_json(discord="HTTPX://example.com/a.png")), "non_http_url"),
    ]
    write_rows(tmp_path / "caps.csv", rows)
    summary = extract_links(str(tmp_path / "caps.csv"), str(tmp_path / "out"))
    assert (summary.kept, dict(summary.rejected)) == (2, {"duplicate_url": 1, "non_http_url": 1})
    table = pq.read_table(tmp_path / "out" / METADATA_FILE).to_pylist()
    # the scheme alone is lowered: the rest of a URL can be case-sensitive
    assert [r["url"] for r in table] == ["http://cdn.discordapp.com/attachments/1/2/Up.PNG",
                                         "https://example.supabase.co/b.png"]
    assert [r["id"] for r in table] == [url_id(r["url"]) for r in table]
    assert [r["discord_url"] for r in table] == ["http://cdn.discordapp.com/attachments/1/2/Up.PNG", "https://cdn.x/c.png"]
    assert (tmp_path / "out" / LINKS_FILE).read_text().splitlines() == [r["url"] for r in table]


@pytest.mark.parametrize(("url", "http"), [("HTTP://a/b", True), ("Https://a", True), ("http://a", True),
                                           ("HTTPS:/a", False), ("HTTPX://a", False), ("ftp://a", False),
                                           (" http://a", False), (b"http://a", False), (None, False)])
def test_is_http_url_ignores_the_scheme_s_case(url, http):
    assert is_http_url(url) is http


def test_unclosed_quote_mid_file_rejects_from_its_line_and_reading_resumes(tmp_path):
    rows = [
        (csv_line("good a", raw_json(discord=URL_A)), None),
        (b'"opened quote never closed,{}\n', "malformed_row"),
        # The csv reader reads the next line as the rest of the unclosed field, up to its first quote (then fails):
        # this row goes with the malformed one, and reading resumes on the line after.
        (csv_line("swallowed", raw_json(discord=URL_D)), None),
        (b"plain prompt," + csv_line(raw_json(discord=URL_B_KREA)), None),
    ]
    lines = write_rows(tmp_path / "q.csv", rows)
    summary = extract_links(str(tmp_path / "q.csv"), str(tmp_path / "out"))
    assert [(line, reason) for line, reason, _ in read_rejects(tmp_path / "out")] == [(lines[1], "malformed_row")]
    table = pq.read_table(tmp_path / "out" / METADATA_FILE).to_pylist()
    assert [r["url"] for r in table] == [URL_A, URL_B_KREA]
    assert [r["csv_line"] for r in table] == [lines[0], lines[3]]
    assert summary.rows == 3 and summary.kept == 2


def test_crlf_line_ends_read_like_lf(tmp_path):
    rows = [r for r in BAD_ROWS if r[1] is None and b"multi" not in r[0]]
    write_rows(tmp_path / "lf.csv", rows)
    (tmp_path / "crlf.csv").write_bytes((tmp_path / "lf.csv").read_bytes().replace(b"\n", b"\r\n"))
    extract_links(str(tmp_path / "lf.csv"), str(tmp_path / "lf"))
    summary = extract_links(str(tmp_path / "crlf.csv"), str(tmp_path / "crlf"))
    assert summary.kept == len(rows) and not summary.rejected
    assert pq.read_table(tmp_path / "lf" / METADATA_FILE).equals(pq.read_table(tmp_path / "crlf" / METADATA_FILE))


def test_utf8_bom_before_the_header_is_accepted(tmp_path):
    write_rows(tmp_path / "bom.csv", BAD_ROWS[:1], header=b"\xef\xbb\xbfprompt,raw_data\n")
    assert extract_links(str(tmp_path / "bom.csv"), str(tmp_path / "out")).kept == 1


def test_columns_found_by_header_name_in_any_order(tmp_path):
    source = tmp_path / "swapped.csv"
    source.write_bytes(b"raw_data,extra,prompt\n" + csv_line(raw_json(discord=URL_A), "x", "swapped prompt"))
    extract_links(str(source), str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out" / METADATA_FILE).to_pylist()
    assert [(r["url"], r["prompt"]) for r in table] == [(URL_A, "swapped prompt")]


@pytest.mark.parametrize("header", [b"text,raw_data\n", b"prompt,data\n", b"a\n", b""])
def test_csv_without_prompt_and_raw_data_header_is_a_user_error(tmp_path, header):
    source = tmp_path / "no_header.csv"
    source.write_bytes(header + (csv_line("p", raw_json(discord=URL_A)) if header else b""))
    with pytest.raises(UserError) as error:
        extract_links(str(source), str(tmp_path / "out"))
    assert str(source) in str(error.value)
    assert not (tmp_path / "out" / LINKS_FILE).exists() and not list(tmp_path.rglob("*.partial"))


def test_missing_csv_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found") as error:
        extract_links(str(tmp_path / "nowhere.csv"), str(tmp_path / "out"))
    assert "nowhere.csv" in str(error.value)
    assert not (tmp_path / "out").exists()


# --- atomic outputs ---------------------------------------------------------------------------


def output_bytes(out):
    return {name: (out / name).read_bytes() for name in OUTPUTS}


def test_rerun_replaces_outputs_instead_of_appending(sample_csv, tmp_path):
    out = tmp_path / "out"
    extract_links(str(sample_csv), str(out))
    first = output_bytes(out)
    extract_links(str(sample_csv), str(out))
    assert output_bytes(out) == first
    assert len((out / LINKS_FILE).read_text().splitlines()) == SAMPLE_ROWS - 1
    assert sorted(p.name for p in out.iterdir()) == [".metadata.1", ".metadata.2", "metadata"]  # the set before stays
    assert sorted(p.relative_to(out).as_posix() for p in (out / "metadata").iterdir()) == sorted(OUTPUTS)


def fail_on_call(n, error, real=None):
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise error
        return real(*args, **kwargs)

    return failing


@pytest.mark.parametrize("where", ["parse_row", "write_table", "interrupt", "late check"])
def test_interrupted_run_leaves_previous_outputs_intact(sample_csv, tmp_path, monkeypatch, where):
    out = tmp_path / "out"
    extract_links(str(sample_csv), str(out))
    before = output_bytes(out)
    monkeypatch.setattr(csv_pieces, "CHUNK_BYTES", 100_000)  # several pieces already written when it fails
    monkeypatch.setattr(links, "ROW_GROUP_ROWS", 100)
    if where == "late check":  # rows set aside past the keys held in memory, then the check at the end fails
        monkeypatch.setattr(url_keys, "MEMORY_KEYS", 50)
        monkeypatch.setattr(url_keys, "_later_lines", fail_on_call(1, OSError("no space left on device")))
        error = OSError
    elif where == "write_table":
        real = links.pq.ParquetWriter.write_table
        monkeypatch.setattr(links.pq.ParquetWriter, "write_table", fail_on_call(4, OSError("disk full"), real))
        error = OSError
    else:
        error = RuntimeError if where == "parse_row" else KeyboardInterrupt
        monkeypatch.setattr(links, "parse_row", fail_on_call(500, error("boom"), links.parse_row))
    with pytest.raises(error):
        extract_links(str(sample_csv), str(out))
    assert output_bytes(out) == before
    assert sorted(p.name for p in out.iterdir()) == [".metadata.1", "metadata"]  # nothing unpublished left


def test_interrupted_first_run_leaves_nothing(sample_csv, tmp_path, monkeypatch):
    monkeypatch.setattr(links, "parse_row", fail_on_call(10, RuntimeError("boom"), links.parse_row))
    with pytest.raises(RuntimeError):
        extract_links(str(sample_csv), str(tmp_path / "out"))
    assert list((tmp_path / "out").iterdir()) == []


# --- the script and the default CSV -------------------------------------------------------------


def run_script(cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def assert_one_error_line(result, *words):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0]


def test_offline_download_says_which_url_and_where_to_put_the_file(tmp_path):
    url = "http://127.0.0.1:9/1k.csv"  # the discard port: nothing listens there
    result = run_script(tmp_path, f"--CSV_URL={url}")
    assert_one_error_line(result, url, config.CSV_FILE, "put it at")
    assert not (tmp_path / config.CSV_FILE).exists()
    assert not list(tmp_path.rglob("*.partial")) and not (tmp_path / "outputs").exists()


def test_default_csv_downloaded_and_checked_once(sample_csv, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copyfile(sample_csv, served / "1k.csv")
    sha256 = hashlib.sha256(sample_csv.read_bytes()).hexdigest()
    with serve(served) as base:
        result = run_script(tmp_path, f"--CSV_URL={base}/1k.csv", f"--CSV_SHA256={sha256}")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / config.CSV_FILE).read_bytes() == sample_csv.read_bytes()
    assert f"{config.CSV_FILE}: fetched from {base}/1k.csv" in result.stdout
    links_file = tmp_path / config.OUT_DIR / LINKS_FILE
    assert len(links_file.read_text().splitlines()) == SAMPLE_ROWS - 1
    assert f"{SAMPLE_ROWS} rows, {SAMPLE_ROWS - 1} kept, 1 rejected" in result.stdout
    # Once there, the file is used as it is: no download (nothing answers at this URL now).
    again = run_script(tmp_path, "--CSV_URL=http://127.0.0.1:9/1k.csv", f"--CSV_SHA256={sha256}")
    assert again.returncode == 0, again.stderr
    assert "fetched from" not in again.stdout


def test_download_with_wrong_sha256_is_refused(sample_csv, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copyfile(sample_csv, served / "1k.csv")  # not the real 1k.csv: config.CSV_SHA256 is not its sha256
    with serve(served) as base:
        result = run_script(tmp_path, f"--CSV_URL={base}/1k.csv")
    assert_one_error_line(result, "sha256", config.CSV_SHA256, f"{base}/1k.csv")
    assert not (tmp_path / config.CSV_FILE).exists()
    assert not list(tmp_path.rglob("*.partial")) and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/1k.csv"])
def test_non_http_url_is_refused(tmp_path, url):
    result = run_script(tmp_path, f"--CSV_URL={url}")
    assert_one_error_line(result, url, "only http(s)")
    assert not (tmp_path / config.CSV_FILE).exists() and not list(tmp_path.rglob("*.partial"))


def test_script_with_another_csv_file_does_not_fetch(tmp_path):
    source = tmp_path / "mine.csv"
    write_rows(source, BAD_ROWS)
    result = run_script(tmp_path, f"--CSV_FILE={source}", "--OUT_DIR=elsewhere", "--CSV_URL=http://127.0.0.1:9/x")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "data").exists()
    assert len((tmp_path / "elsewhere" / LINKS_FILE).read_text().splitlines()) == 4
    assert f"{len(BAD_ROWS)} rows, 4 kept, {len(BAD_ROWS) - 4} rejected" in result.stdout


# --- internals that speed makes subtle ------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_duplicates_found_within_and_across_pieces(tmp_path, monkeypatch, workers):
    rng = random.Random(2)
    urls = [f"https://example.com/{rng.randrange(300)}.png" for _ in range(1000)]
    write_rows(tmp_path / "dups.csv", [(csv_line("p", raw_json(discord=url)), None) for url in urls])
    monkeypatch.setattr(csv_pieces, "CHUNK_BYTES", 700)  # about 7 rows a piece
    monkeypatch.setattr(url_keys.KeptUrls, "RECENT_KEYS", 16)  # the latest keys merged into the rest now and then
    summary = extract_links(str(tmp_path / "dups.csv"), str(tmp_path / "out"), workers)
    first = list(dict.fromkeys(urls))
    assert summary.kept == len(first) and summary.rejected["duplicate_url"] == len(urls) - len(first)
    table = pq.read_table(tmp_path / "out" / METADATA_FILE).to_pylist()
    assert [r["url"] for r in table] == first
    assert [r["csv_line"] for r in table] == [urls.index(url) + 2 for url in first]
    duplicate_lines = sorted(line for line, reason, _ in read_rejects(tmp_path / "out") if reason == "duplicate_url")
    kept_lines = {r["csv_line"] for r in table}
    assert duplicate_lines == [n for n in range(2, len(urls) + 2) if n not in kept_lines]


@pytest.mark.parametrize(("memory_keys", "workers"), [(40, 1), (40, 2), (0, 1)])
def test_rows_past_the_keys_held_in_memory_are_checked_at_the_end_with_the_same_outputs(tmp_path, monkeypatch,
                                                                                      memory_keys, workers):
    """URLs repeated before, across and after the point where the duplicate check stops holding keys in memory,
    bad rows among them: byte for byte the outputs of a run that held every key."""
    rng = random.Random(5)
    urls = [f"https://example.com/{rng.randrange(120)}.png" for _ in range(400)]
    rows = [(csv_line("p", raw_json(discord=url)), None) for url in urls]
    rows[7:7] = BAD_ROWS[:3]  # refused rows early, and late
    rows[300:300] = BAD_ROWS[:3]
    write_rows(tmp_path / "dups.csv", rows)
    write_rows(tmp_path / "unique.csv", [(csv_line("p", raw_json(discord=f"https://example.com/{n}")), None)
                                         for n in range(30)])
    monkeypatch.setattr(csv_pieces, "CHUNK_BYTES", 700)  # about 7 rows a piece
    monkeypatch.setattr(links, "ROW_GROUP_ROWS", 20)  # row groups made of pieces and of rows read back alike
    whole = {name: extract_links(str(tmp_path / f"{name}.csv"), str(tmp_path / f"whole-{name}"), workers)
             for name in ("dups", "unique")}
    monkeypatch.setattr(url_keys, "MEMORY_KEYS", memory_keys)
    monkeypatch.setattr(url_keys, "DUCKDB_MEMORY", "16MB")
    for name in ("dups", "unique"):
        summary = extract_links(str(tmp_path / f"{name}.csv"), str(tmp_path / name), workers)
        assert summary == whole[name] and dict(summary.rejected) == dict(whole[name].rejected)  # no "0 duplicates"
        for output in OUTPUTS:
            assert (tmp_path / name / output).read_bytes() == (tmp_path / f"whole-{name}" / output).read_bytes()
        assert sorted(os.listdir(tmp_path / name / "metadata")) == ["img_links.txt", "metadata.parquet", "rejects.csv"]
    assert whole["dups"].rejected["duplicate_url"] > 250 and "duplicate_url" not in whole["unique"].rejected
    assert pq.ParquetFile(tmp_path / "dups" / METADATA_FILE).metadata.num_row_groups == -(-whole["dups"].kept // 20)


def test_later_lines_are_handed_out_in_stretches_across_batches():
    stretches = ([1, 3], [5], [8, 9])
    batches = iter(pa.record_batch([pa.array(lines, pa.int64())], names=["csv_line"]) for lines in stretches)
    lines = url_keys._Lines(batches)
    assert [lines.upto(last).tolist() for last in (0, 4, 8, 8, 100)] == [[], [1, 3], [5, 8], [], [9]]


def test_no_workers_for_a_csv_of_a_few_pieces(sample_csv, tmp_path, monkeypatch):
    pools = count_pools(monkeypatch)
    summary = extract_links(str(sample_csv), str(tmp_path / "out"), workers=-1)  # 1 MB, one piece
    assert summary.kept == SAMPLE_ROWS - 1 and pools == []


# 2 idle cores: 2 workers; a job on one of them: 1 worker, in the script's own process; a passing load below half a
# core is not counted.
@pytest.mark.parametrize(("cores", "load", "workers"),
                         [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 5.0, 1), (16, 3.2, 13), (8, 0, 8)])
def test_workers_are_the_cores_free_of_other_load(cores, load, workers):
    assert csv_pieces.free_cores(cores, load) == workers


def test_workers_asked_for_are_started_and_minus_one_is_the_free_cores(sample_csv, monkeypatch):
    monkeypatch.setattr(csv_pieces, "CHUNK_BYTES", 1_000)  # sample.csv is then big enough for workers
    assert csv_pieces.worker_count(str(sample_csv), 3) == 3
    assert 1 <= csv_pieces.worker_count(str(sample_csv), -1) <= csv_pieces.usable_cores() <= (os.cpu_count() or 1)


# The generated CSV always; the real one when it can be had (its multi-line row among the pieces).
BOTH_CSVS = pytest.mark.parametrize("csv_fixture", ["sample_csv", "csv_1k"])


@BOTH_CSVS
@pytest.mark.parametrize("workers", [1, 2])
def test_csv_in_pieces_gives_the_same_outputs(request, csv_fixture, tmp_path, monkeypatch, workers):
    source = str(request.getfixturevalue(csv_fixture))
    whole = extract_links(source, str(tmp_path / "whole"))
    monkeypatch.setattr(csv_pieces, "CHUNK_BYTES", 64_000)  # over a dozen pieces
    pools = count_pools(monkeypatch)
    summary = extract_links(source, str(tmp_path / "out"), workers)
    assert len(pools) == (workers > 1)
    assert summary == whole and summary.kept > 900
    for name in OUTPUTS:
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


@BOTH_CSVS
def test_pieces_end_where_rows_end(request, csv_fixture, monkeypatch):
    source = request.getfixturevalue(csv_fixture)
    monkeypatch.setattr(csv_pieces, "CHUNK_BYTES", 5_000)
    data = source.read_bytes()
    with open(source, "rb") as raw:
        raw.readline()
        pieces = list(csv_pieces.pieces(raw))
    assert len(pieces) > 100 and b"".join(piece for _, piece in pieces) == data[data.index(b"\n") + 1 :]
    for start, piece in pieces:
        assert data[start : start + len(piece)] == piece
        rows = list(csv.reader(io.StringIO(piece.decode("utf-8"), newline=""), strict=True))
        assert rows and all(len(row) == 2 for row in rows)  # whole rows only, the multi-line ones included


def test_a_stray_quote_does_not_make_one_huge_piece(tmp_path, monkeypatch):
    # A quote inside an unquoted field is read as a character, but it leaves an odd number of quotes before every
    # later line end, so no line end looks like a row end: the piece is cut at its last line end once MAX is reached.
    rows = [(b'a 5" robot,' + csv_line(raw_json(discord=URL_A)), None)]
    rows += [(csv_line(f"row {i}", raw_json(discord=f"{URL_C}?{i}")), None) for i in range(200)]
    lines = write_rows(tmp_path / "stray.csv", rows)
    monkeypatch.setattr(csv_pieces, "CHUNK_BYTES", 1_000)
    monkeypatch.setattr(csv_pieces, "MAX_CHUNK_BYTES", 4_000)
    with open(tmp_path / "stray.csv", "rb") as raw:
        raw.readline()
        sizes = [len(piece) for _, piece in csv_pieces.pieces(raw)]
    assert len(sizes) > 10 and max(sizes) < 4_000 + 1_000
    summary = extract_links(str(tmp_path / "stray.csv"), str(tmp_path / "out"))
    assert (summary.rows, summary.kept) == (201, 201)
    table = pq.read_table(tmp_path / "out" / METADATA_FILE).to_pylist()
    assert [r["csv_line"] for r in table] == lines and table[0]["prompt"] == 'a 5" robot'


def test_failure_while_workers_parse_leaves_previous_outputs_intact(sample_csv, tmp_path, monkeypatch):
    out = tmp_path / "out"
    extract_links(str(sample_csv), str(out))
    before = output_bytes(out)
    monkeypatch.setattr(csv_pieces, "CHUNK_BYTES", 50_000)
    monkeypatch.setattr(links, "ROW_GROUP_ROWS", 100)
    real = links.pq.ParquetWriter.write_table
    monkeypatch.setattr(links.pq.ParquetWriter, "write_table", fail_on_call(3, OSError("disk full"), real))
    with pytest.raises(OSError, match="disk full"):
        extract_links(str(sample_csv), str(out), workers=2)
    assert output_bytes(out) == before
    assert sorted(p.name for p in out.iterdir()) == [".metadata.1", "metadata"]


def test_kept_urls_say_which_keys_are_new_like_a_set(monkeypatch):
    monkeypatch.setattr(url_keys.KeptUrls, "RECENT_KEYS", 50)
    rng = np.random.default_rng(3)
    kept, seen = url_keys.KeptUrls(), set()
    for _ in range(100):
        keys = rng.integers(0, 2_000, rng.integers(0, 60), dtype=np.uint64) << np.uint64(52)  # high bits, repeats
        expected = []
        for key in keys.tolist():
            expected.append(key not in seen)
            seen.add(key)
        assert kept.add(keys).tolist() == expected
    assert len(kept.large) > 1_000 and sorted(seen) == sorted(np.concatenate([kept.large, kept.recent]).tolist())


@pytest.mark.parametrize("enabled", [True, False])
def test_garbage_collector_left_as_it_was(tmp_path, monkeypatch, enabled):
    write_rows(tmp_path / "ok.csv", BAD_ROWS)
    monkeypatch.setattr(gc, "isenabled", lambda: enabled)  # what extract_links finds
    calls = []
    monkeypatch.setattr(gc, "enable", lambda: calls.append("enable"))
    monkeypatch.setattr(gc, "disable", lambda: calls.append("disable"))
    extract_links(str(tmp_path / "ok.csv"), str(tmp_path / "out"))
    monkeypatch.setattr(links, "parse_row", fail_on_call(2, RuntimeError("boom"), links.parse_row))
    with pytest.raises(RuntimeError):
        extract_links(str(tmp_path / "ok.csv"), str(tmp_path / "out"))
    assert calls == (["disable", "enable"] * 2 if enabled else ["disable"] * 2)


# --- a killed script leaves no process behind -------------------------------------------------------

# The script itself, with pieces small enough that a CSV of a few MB gets parsing processes (a CSV under
# 4 * CHUNK_BYTES is parsed in the script's own process).
SMALL_PIECES = """
import runpy, sys
from prompt_search.sources import csv_pieces
csv_pieces.CHUNK_BYTES = 50_000
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="finds the processes through /proc (Linux)")
def test_killed_script_leaves_no_worker_or_helper_process(tmp_path):
    rows = [(csv_line(f"prompt {i} " + "word " * 40, raw_json(discord=f"{URL_A}?{i}")), None) for i in range(60_000)]
    write_rows(tmp_path / "big.csv", rows)  # 19 MB: hundreds of pieces, two parsing processes
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    script = subprocess.Popen([sys.executable, "-c", SMALL_PIECES, str(SCRIPT), "--CSV_FILE=big.csv",
                               "--LINK_WORKERS=2"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    children = set()
    while len(children) < 3 and script.poll() is None and time.monotonic() < deadline:  # 2 workers, 1 tracker
        children = {pid for pid in children_of(script.pid) if is_running(pid)}
        time.sleep(0.01)
    assert script.poll() is None, "the script ended before its workers could be seen: give it a bigger CSV"
    assert len(children) == 3, children
    script.kill()
    script.wait()
    deadline = time.monotonic() + 10
    while any(map(is_running, children)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if is_running(pid)], "processes of the killed script still running"


# Runs the script (argv[2:]) as a child and waits for it; whatever the script leaves running, or exited but
# unreaped, is handed to this process by the kernel (a child subreaper) and counted: none may be.
# argv[1] == "fail": the metadata table's first write fails (the parsing processes have started then).
SUBREAPER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
setup = "from prompt_search.sources import csv_pieces, open_prompts as links; csv_pieces.CHUNK_BYTES = 50_000"
if sys.argv[1] == "fail":
    setup += "; links.pq.ParquetWriter.write_table = lambda *args, **kwargs: 1 / 0"
run = "\\nimport runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
script = subprocess.run([sys.executable, "-c", setup + run, *sys.argv[2:]], stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE, text=True)
left = []
while True:
    try:
        left.append(os.wait()[0])
    except ChildProcessError:
        break
print(script.returncode, len(left), repr(script.stderr[-300:]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="a child subreaper (prctl) is Linux's")
@pytest.mark.parametrize("outcome", ["success", "fail"])
def test_no_process_outlives_the_script(tmp_path, outcome):
    rows = [(csv_line(f"prompt {i}", raw_json(discord=f"{URL_A}?{i}")), None) for i in range(6_000)]
    write_rows(tmp_path / "mid.csv", rows)  # 1 MB: 20 pieces of 50 KB, two parsing processes
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run([sys.executable, "-c", SUBREAPER, outcome, str(SCRIPT), "--CSV_FILE=mid.csv",
                             "--LINK_WORKERS=2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    returncode, left, stderr = result.stdout.split(" ", 2)
    assert (int(returncode), int(left)) == ((0, 0) if outcome == "success" else (1, 0)), stderr
    if outcome == "fail":
        assert "ZeroDivisionError" in stderr


def test_stopping_the_resource_tracker_leaves_no_traceback_at_exit():
    """cli.run stops multiprocessing's resource tracker when the script ends; spawn semaphores the script still holds
    (a pool's locks) are released first, or their finalizers fail at exit with a traceback each."""
    code = ("import multiprocessing\nfrom prompt_search.cli import run\nheld = []\n"
            "run(lambda argv: held.append(multiprocessing.get_context('spawn').Lock()))")
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (0, "")


# pyarrow (19 to 23 at least: apache/arrow#33975, #50482) may abort a script at its exit, "terminate called
# without an active exception", after it read a Parquet file through a Python file object, as
# pandas.read_parquet(path) does: its threads finish with the file after the read returned and take the
# interpreter's lock while it shuts down. The README's way of reading our outputs gives pyarrow the path.
READ_AS_THE_README_SAYS = ('import pandas, pyarrow.fs; pandas.read_parquet("outputs/metadata/metadata.parquet", '
                           'filesystem=pyarrow.fs.LocalFileSystem())')


def test_reading_the_metadata_as_the_readme_says_never_aborts_at_exit(tmp_path):
    write_open_prompts_csv(tmp_path / "p.csv", [(f"prompt {i}", f"{URL_A}?{i}") for i in range(3_000)])
    extract_links(str(tmp_path / "p.csv"), str(tmp_path / "outputs"))
    exits = [subprocess.run([sys.executable, "-c", READ_AS_THE_README_SAYS], cwd=tmp_path, capture_output=True,
                            timeout=120).returncode for _ in range(20)]
    assert exits == [0] * 20
