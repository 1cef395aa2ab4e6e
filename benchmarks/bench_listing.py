"""Step 3' listing of distinct prompts at scale: today's Python loop (the baseline) against the Arrow + DuckDB
listing, time and peak memory, each measurement in a fresh subprocess.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/bench_listing.py [--rows=1000000] [--big-rows=10000000]
        [--rounds=2] [--work-dir=/tmp/bench_listing]

Writes metadata.parquet files in step 1's schema (links.SCHEMA, PARQUET_OPTIONS) into --work-dir (default: a
temporary folder, removed afterwards): --rows rows whose prompts are all distinct, --rows rows of which half
repeat an earlier prompt (a third of those re-cased or re-spaced) and 1% have no prompt, and --big-rows rows
with repeats, run by the new listing only (0: skip). Prompts are 8 to 30 of a few hundred words, and a number
where they must be distinct. Each run reports the listing's time, the digest's time (embed's manifest), the
time to walk the listing batch by batch as step 3' does, and its peak RSS.
Targets (issue 17): >= 5x faster than the baseline at 1M rows; peak RSS <= 1 GiB at 10M."""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prompt_search.sources.metadata_table import PARQUET_OPTIONS, SCHEMA  # noqa: E402
from prompt_search.sources.open_prompts import ROW_GROUP_ROWS  # noqa: E402

WORDS = ("a an the of in on with by at from portrait landscape city forest castle dragon robot cat dog girl man "
         "woman knight wizard ship ocean mountain river sunset sunrise night storm rain snow fog light shadow fire "
         "ice gold silver red blue green purple orange black white pink neon cyberpunk steampunk fantasy gothic "
         "baroque surreal abstract minimal detailed intricate highly realistic photorealistic cinematic dramatic "
         "soft warm cold dark bright glowing ancient futuristic ruined floating giant tiny cute scary beautiful "
         "epic majestic serene lonely crowded painting drawing sketch illustration render photo watercolor oil "
         "charcoal pencil ink digital concept art artstation trending unreal engine octane 8k 4k hdr bokeh depth "
         "field wide angle close up macro aerial view symmetrical studio lighting volumetric rim golden hour blue "
         "by greg rutkowski alphonse mucha artgerm wlop beeple moebius hayao miyazaki studio ghibli pixar disney "
         "marvel dc star wars lord rings harry potter zelda pokemon mario sonic batman superman spiderman ironman "
         "tree flower garden house tower bridge road car train plane bird fish horse wolf fox owl lion tiger bear "
         "skull flower crystal gem sword shield armor crown throne temple church cathedral library kitchen bedroom "
         "street market festival battle war peace love death life dream nightmare space planet moon star galaxy "
         "nebula alien astronaut spaceship station desert jungle island beach cave volcano waterfall lake").split()

MIN_WORDS, MAX_WORDS = 8, 30  # about 130 characters a prompt, as in open-prompts

CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import bench_listing
from prompt_search.embedding import listing, set_writer as embed
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
which, metadata, out = sys.argv[2:5]
start = time.perf_counter()
if which == "old":
    items, empty = bench_listing.old_distinct_prompts(metadata)
    listed = time.perf_counter()
    digest = embed.items_digest(items)
    digested = time.perf_counter()
    for begin in range(0, len(items), 128):
        ids, prompts = zip(*(items[i] for i in range(begin, min(begin + 128, len(items)))))
else:
    count, empty = listing.write_listing(metadata, out)
    listed = time.perf_counter()
    items = listing.Listing(out)
    digest = items.digest()
    digested = time.perf_counter()
    for begin in range(0, len(items), 128):
        ids, prompts = items.columns(range(begin, min(begin + 128, len(items))))
walked = time.perf_counter()
print(json.dumps({"distinct": len(items), "empty": empty, "digest": digest, "list_s": listed - start,
                  "digest_s": digested - listed, "walk_s": walked - digested,
                  "rss_after_imports_mib": before / 1024,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def old_distinct_prompts(metadata_file: str) -> tuple[list[tuple[str, str]], int]:
    """BASELINE, not used by the pipeline: textual.distinct_prompts as it was before issue 17, a Python loop per row."""
    import hashlib

    seen: set[bytes] = set()
    items, empty = [], 0
    for batch in pq.ParquetFile(metadata_file).iter_batches(columns=["id", "prompt"]):
        for row_id, prompt in zip(batch["id"].to_pylist(), batch["prompt"].to_pylist(), strict=True):
            key = " ".join((prompt or "").split()).casefold()
            if not key:
                empty += 1
                continue
            digest = hashlib.blake2b(key.encode(), digest_size=12).digest()
            if digest not in seen:
                seen.add(digest)
                items.append((row_id, prompt))
    return items, empty


def hex_ids(rng: np.random.Generator, count: int) -> pa.Array:
    """count random ids of 16 hex digits, as step 1 makes them."""
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    nibbles = rng.integers(0, 16, (count, 16), dtype=np.uint8)
    return pa.array(digits[nibbles].view("S16").ravel()).cast(pa.string())


def make_metadata(path: Path, rows: int, repeats: bool, seed: int = 0, chunk: int = 1_000_000) -> None:
    """rows rows in step 1's schema. repeats: half the rows repeat an earlier prompt of their chunk (a third of
    those upper-cased or with their spaces doubled and padded), and 1% have none (null or blank)."""
    rng = np.random.default_rng(seed)
    words = pa.array(WORDS)
    with pq.ParquetWriter(path, SCHEMA, **PARQUET_OPTIONS) as writer:
        for start in range(0, rows, chunk):
            count = min(chunk, rows - start)
            length = rng.integers(MIN_WORDS, MAX_WORDS + 1, count)
            parts = [words.take(pa.array(rng.integers(0, len(WORDS), count), mask=length <= i))
                     for i in range(MAX_WORDS)]
            if not repeats:
                parts.append(pc.cast(pa.array(np.arange(start, start + count)), pa.string()))
            prompts = pc.binary_join_element_wise(*parts, " ", null_handling="skip")
            if repeats:
                earlier = np.arange(count) - rng.integers(0, np.maximum(np.arange(count), 1), count)
                again = rng.random(count) < 0.5
                prompts = prompts.take(pa.array(np.where(again, earlier, np.arange(count))))
                variant = rng.integers(0, 6, count)
                upper, spaced = again & (variant == 0), again & (variant == 1)
                prompts = pc.if_else(pa.array(upper), pc.utf8_upper(prompts), prompts)
                padded = pc.binary_join_element_wise(" ", pc.replace_substring(prompts, " ", " \t "), "\n", "")
                prompts = pc.if_else(pa.array(spaced), padded, prompts)
                blank = rng.random(count)
                prompts = pc.if_else(pa.array(blank < 0.005), pa.scalar(None, pa.string()), prompts)
                prompts = pc.if_else(pa.array((blank >= 0.005) & (blank < 0.01)), "  ", prompts)
            columns = {"id": hex_ids(rng, count), "prompt": prompts}
            writer.write_table(pa.table([columns.get(f.name, pa.nulls(count, f.type)) for f in SCHEMA], schema=SCHEMA),
                               row_group_size=ROW_GROUP_ROWS)


def make_in_subprocess(path: Path, rows: int, repeats: bool) -> None:
    """make_metadata in a subprocess: a child starts with the peak RSS of the process that forked it (Linux keeps
    ru_maxrss across exec), so this one must never hold a table."""
    code = f"import bench_listing; bench_listing.make_metadata(bench_listing.Path({str(path)!r}), {rows}, {repeats})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent,
                   env={**os.environ, "PYTHONPATH": str(REPO)})


def measure(which: str, metadata: Path, work: Path) -> dict:
    out = work / "listing.arrow"
    result = subprocess.run([sys.executable, "-c", CHILD, str(Path(__file__).parent), which, str(metadata), str(out)],
                            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    out.unlink(missing_ok=True)
    return json.loads(result.stdout.splitlines()[-1])


def report(name: str, which: str, figures: dict) -> None:
    print(f"{name:<28} {which:<8} {figures['distinct']:>9} distinct {figures['empty']:>7} empty  "
          f"list {figures['list_s']:7.2f} s  digest {figures['digest_s']:6.2f} s  walk {figures['walk_s']:6.2f} s  "
          f"peak {figures['peak_rss_mib']:7.0f} MiB (imports {figures['rss_after_imports_mib']:.0f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work-dir")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')} {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"pyarrow {pa.__version__}, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        work = Path(work)
        cases = [(f"{args.rows} rows, all distinct", args.rows, False), (f"{args.rows} rows, repeats", args.rows, True)]
        for name, rows, repeats in cases:
            metadata = work / "metadata.parquet"
            make_in_subprocess(metadata, rows, repeats)
            times = {"old": [], "new": []}
            for _ in range(args.rounds):
                for which in times:
                    figures = measure(which, metadata, work)
                    times[which].append(figures)
                    report(name, which, figures)
            assert times["old"][0]["digest"] == times["new"][0]["digest"], "the listings differ"
            old, new = (min(f["list_s"] for f in times[w]) for w in ("old", "new"))
            print(f"{name}: listing {old / new:.1f}x faster (best of {args.rounds}), digest identical; "
                  f"load average {os.getloadavg()[0]:.1f}")
        if args.big_rows:
            metadata = work / "big.parquet"
            make_in_subprocess(metadata, args.big_rows, True)
            report(f"{args.big_rows} rows, repeats", "new", measure("new", metadata, work))


if __name__ == "__main__":
    main()
