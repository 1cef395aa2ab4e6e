"""Step 1 at scale: speed and peak memory of extract_links on 100k and 1M rows, in one process and with workers.

    PROMPT_SEARCH_DATA=folder/with/1k.csv NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/bench_links.py \
        [--work-dir=/tmp/bench_links] [--rows=1000000]

Builds a CSV of --rows rows from 1k.csv's rows, each image URL made unique with ?n=<row> (so no row is
a duplicate), and its first 100k rows as a second CSV, in --work-dir (default: a temporary folder, removed
afterwards). Runs step 1 on each in a fresh subprocess that reports its own time, CPU time and peak RSS,
with workers=1 (the baseline: our own code, all in one process) and workers=-1 (the default, one parsing
process per CPU), alternating, --rounds times. The baseline is not another tool: the ratios say what the
workers add to our own one-process code, on this machine, at the load average printed beside them.
--memory-keys: how many URL keys the duplicate check holds in memory before it sets the rest aside for
the end (url_keys.py).
Targets: >= 50k rows/s; peak RSS < 1 GB and flat from 100k to 1M rows."""

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
sys.path.insert(0, str(REPO / "tests"))  # scaffolding.py: random-weight models, the real data files

from prompt_search.sources import url_keys  # noqa: E402

CHILD = """
import json, os, resource, sys, time
from prompt_search.sources.csv_pieces import worker_count
from prompt_search.sources import url_keys
from prompt_search.sources.open_prompts import extract_links
url_keys.MEMORY_KEYS = int(sys.argv[4])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start, cpu_start = time.perf_counter(), time.process_time()
summary = extract_links(sys.argv[1], sys.argv[2], int(sys.argv[3]))
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the parsing processes, reaped when the run ended
print(json.dumps({"rows": summary.rows, "kept": summary.kept, "seconds": seconds,
                  "cpu_seconds": cpu_seconds + children.ru_utime + children.ru_stime,
                  "rss_after_imports_kb": before, "peak_rss_kb": peak, "child_peak_rss_kb": children.ru_maxrss,
                  "workers": worker_count(sys.argv[1], int(sys.argv[3])),
                  "load": os.getloadavg()[0]}))
"""


def source_csv(work: Path) -> str:
    """The real 1k.csv from $PROMPT_SEARCH_DATA, copied into work and checked against its sha256."""
    from scaffolding import data_file_from_env

    import config

    return data_file_from_env("1k.csv", config.CSV_SHA256, str(work))


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


def measure(csv_file: Path, out_dir: Path, workers: int, memory_keys: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(csv_file), str(out_dir), str(workers), str(memory_keys)],
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
    parser.add_argument("--memory-keys", type=int, default=url_keys.MEMORY_KEYS,
                        help="URL keys step 1 holds in memory before checking the rest at the end")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setting")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_links_") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        small, big = work / f"rows_{args.small_rows}.csv", work / f"rows_{args.rows}.csv"
        if not (small.exists() and big.exists()):
            start = time.perf_counter()
            build(source_csv(work), small, big, args.rows, args.small_rows)
            print(f"built {big} ({big.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s")
        results = {}  # (rows, workers) -> stats; the two settings alternate, the order flipped each round
        for round_ in range(args.rounds):
            for n, path in ((args.small_rows, small), (args.rows, big)):
                for workers in (1, -1) if round_ % 2 == 0 else (-1, 1):
                    stats = measure(path, work / f"out_{n}_{workers}", workers, args.memory_keys)
                    results.setdefault((n, workers), []).append(stats)

    print(f"{'rows':>9} {'workers':>7} {'round':>5} {'CSV MB':>7} {'kept':>9} {'seconds':>8} {'rows/s':>8} "
          f"{'CPU s':>7} {'rows/CPU s':>10} {'peak RSS MB':>12} {'load avg':>9}")
    for (n, workers), runs in results.items():
        for round_, r in enumerate(runs, 1):
            print(f"{n:>9} {workers:>7} {round_:>5} {r['mb']:>7.0f} {r['kept']:>9} {r['seconds']:>8.1f} "
                  f"{r['rows'] / r['seconds']:>8.0f} {r['cpu_seconds']:>7.1f} {r['rows'] / r['cpu_seconds']:>10.0f} "
                  f"{peak_mb(r):>12.0f} {r['load']:>9.1f}")
    print(f"machine: {os.cpu_count()} CPUs, {python_speed():.2f} CPU s for 10M empty Python loop iterations. "
          "workers -1 = one parsing process per CPU (the default); peak RSS with workers is the main process's plus "
          "the largest worker's times the number of workers (an upper bound); load avg: the 1-minute load average "
          "when the run ended (other work on the machine slows it)")
    for n in (args.small_rows, args.rows):
        ratios = [one["seconds"] / many["seconds"] for one, many in zip(results[n, 1], results[n, -1], strict=True)]
        loads = ", ".join(f"{many['load']:.1f}" for many in results[n, -1])
        print(f"{n} rows: speed-up of workers -1 over our own code on one process (workers 1), per round: "
              f"{', '.join(f'{r:.2f}x' for r in ratios)} (load average {loads})")
    # Targets on the slowest run of the default setting.
    default = {n: max(results[n, -1], key=lambda run: run["seconds"]) for n in (args.small_rows, args.rows)}
    ratio = peak_mb(default[args.rows]) / peak_mb(default[args.small_rows])
    peak = max(peak_mb(r) for r in default.values())
    print(f"peak RSS {args.rows}/{args.small_rows} (workers -1): {ratio:.2f}")
    speeds = ", ".join(f"at {n} rows {'met' if r['rows'] / r['seconds'] >= 50_000 else 'NOT met'} "
                       f"({r['rows'] / r['seconds']:.0f})" for n, r in default.items())
    print(f"targets (workers -1, slowest round): >= 50000 rows/s: {speeds}; "
          f"peak RSS < 1 GB: {'met' if peak < 1024 else 'NOT met'} ({peak:.0f} MB); "
          f"flat (ratio <= 1.2): {'met' if ratio <= 1.2 else 'NOT met'} ({ratio:.2f})")


def peak_mb(stats: dict) -> float:
    children = stats["child_peak_rss_kb"] * stats["workers"] if stats["workers"] > 1 else 0
    return (stats["peak_rss_kb"] + children) / 1024


if __name__ == "__main__":
    from prompt_search.errors import UserError

    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
