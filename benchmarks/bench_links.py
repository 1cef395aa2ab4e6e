"""Step 1 at scale: speed and peak memory of extract_links on 100k and 1M rows.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/bench_links.py [--work-dir=/tmp/bench_links] [--rows=1000000]

Builds a CSV of --rows rows from 1k.csv's rows, each image URL made unique with ?n=<row> (so no row is
a duplicate), and its first 100k rows as a second CSV, in --work-dir (default: a temporary folder, removed
afterwards). Runs step 1 on each in a fresh subprocess that reports its own time and peak RSS.
Targets: >= 50k rows/s; peak RSS < 1 GB and flat from 100k to 1M rows.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = """
import json, os, resource, sys, time
from prompt_search.links import extract_links
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start, cpu_start = time.perf_counter(), time.process_time()
summary = extract_links(sys.argv[1], sys.argv[2])
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": summary.rows, "kept": summary.kept, "seconds": seconds, "cpu_seconds": cpu_seconds,
                  "rss_after_imports_kb": before, "peak_rss_kb": peak, "load": os.getloadavg()[0]}))
"""


def source_csv() -> str:
    """1k.csv, through the project's own ensure_data_file (copied from ../shared/data or downloaded)."""
    import config
    from prompt_search.files import ensure_data_file

    path = os.path.join(tempfile.gettempdir(), "bench_links_data", os.path.basename(config.CSV_FILE))
    ensure_data_file(path, config.CSV_URL, config.CSV_SHA256, str(REPO / config.LOCAL_DATA_DIR))
    return path


def build(source: str, small: Path, big: Path, rows: int, small_rows: int) -> None:
    with open(source, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        base = list(reader)
    with open(small, "w", newline="", encoding="utf-8") as fs, open(big, "w", newline="", encoding="utf-8") as fb:
        ws, wb = csv.writer(fs), csv.writer(fb)
        ws.writerow(header)
        wb.writerow(header)
        for i in range(rows):
            prompt, raw = base[i % len(base)]
            row = [prompt, raw.replace('.png"', f'.png?n={i}"')]  # every image URL of the row, unique
            wb.writerow(row)
            if i < small_rows:
                ws.writerow(row)


def measure(csv_file: Path, out_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(csv_file), str(out_dir)],
        env=env, capture_output=True, text=True, check=True,
    )
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    stats["mb"] = csv_file.stat().st_size / 1e6
    return stats


def python_speed() -> float:
    """CPU seconds for 10M iterations of an empty Python loop: puts rows/s from different machines side by side."""
    start = time.process_time()
    for _ in range(10_000_000):
        pass
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", help="folder for the generated CSVs and outputs (default: a temporary one)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=100_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_links_") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        small, big = work / f"rows_{args.small_rows}.csv", work / f"rows_{args.rows}.csv"
        if not (small.exists() and big.exists()):
            start = time.perf_counter()
            build(source_csv(), small, big, args.rows, args.small_rows)
            print(f"built {big} ({big.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s")
        results = {n: measure(path, work / f"out_{n}") for n, path in ((args.small_rows, small), (args.rows, big))}

    print(f"{'rows':>9} {'CSV MB':>7} {'kept':>9} {'seconds':>8} {'rows/s':>8} {'CPU s':>7} {'rows/CPU s':>10} "
          f"{'RSS after imports MB':>21} {'peak RSS MB':>12} {'load avg':>9}")
    for n, r in results.items():
        print(f"{n:>9} {r['mb']:>7.0f} {r['kept']:>9} {r['seconds']:>8.1f} {r['rows'] / r['seconds']:>8.0f} "
              f"{r['cpu_seconds']:>7.1f} {r['rows'] / r['cpu_seconds']:>10.0f} "
              f"{r['rss_after_imports_kb'] / 1024:>21.0f} {r['peak_rss_kb'] / 1024:>12.0f} {r['load']:>9.1f}")
    print(f"machine: {os.cpu_count()} CPUs, {python_speed():.2f} CPU s for 10M empty Python loop iterations; "
          "load avg: the 1-minute load average when the run ended (other work on the machine slows it)")
    small_r, big_r = results[args.small_rows], results[args.rows]
    ratio = big_r["peak_rss_kb"] / small_r["peak_rss_kb"]
    speed = min(r["rows"] / r["seconds"] for r in results.values())
    peak_mb = max(r["peak_rss_kb"] for r in results.values()) / 1024
    print(f"peak RSS {args.rows}/{args.small_rows}: {ratio:.2f}")
    print(f"targets: >= 50000 rows/s: {'met' if speed >= 50_000 else 'NOT met'} ({speed:.0f}); "
          f"peak RSS < 1 GB: {'met' if peak_mb < 1024 else 'NOT met'} ({peak_mb:.0f} MB); "
          f"flat (ratio <= 1.2): {'met' if ratio <= 1.2 else 'NOT met'} ({ratio:.2f})")


if __name__ == "__main__":
    from prompt_search.cli import UserError

    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
