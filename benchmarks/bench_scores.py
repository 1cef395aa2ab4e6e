"""Step 4's adherence score at scale: the memory and time of scores.scores_table over N images whose prompts step 3'
embedded, against the baseline of scores.py as it was before (BEFORE): step 3''s vectors read whole (20 GB at 10M).

Run:  .venv/bin/python benchmarks/bench_scores.py --work=/tmp/scores_bench --rows=1000000
      (--batch=128: step 3''s rows per file, config.BATCH_SIZE; the data stay in --work for the next run)

Data: N random 512-d image vectors (the index set's vectors.npy), a metadata table of N ids with one distinct prompt
each, and step 3''s set of their N prompt vectors in files of --batch rows, in a shuffled order (a prompt side lists
distinct prompts, not the images' order). Each measurement runs in a fresh child process: its peak RSS (VmHWM) and
wall time. The baseline child runs the scores.py of commit BEFORE (from git) on the same data.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from prompt_search.embedding.set_writer import MANIFEST, unit_rows  # noqa: E402
from prompt_search.index.scores import Prompts, scores_table  # noqa: E402
from prompt_search.layout import VECTORS_FILE  # noqa: E402
from prompt_search.settings import EmbedSettings  # noqa: E402

DIMENSION = 512
BEFORE = "8c4d613"  # the last commit whose scores.py read step 3''s vectors whole
MODEL = "bench-model"  # the fingerprint both sets carry: the prompt vectors are this model's


def build(work: Path, rows: int, batch: int) -> None:
    """The three inputs of step 4's scores, unless work holds them already."""
    done = work / "done.json"
    if done.exists() and json.loads(done.read_text()) == {"rows": rows, "batch": batch}:
        return
    rng = np.random.default_rng(0)
    ids = [f"{i:016x}" for i in range(rows)]
    pq.write_table(pa.table({"id": ids, "prompt": [f"prompt number {i}" for i in range(rows)]}),
                   work / "metadata.parquet")
    index = work / "index"
    index.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(index / VECTORS_FILE, "w+", np.float32, (rows, DIMENSION))
    for start in range(0, rows, 65_536):
        images[start:start + 65_536] = unit_rows(rng.standard_normal((min(65_536, rows - start), DIMENSION),
                                                                     np.float32))
    images.flush()
    textual = work / "textual"
    for sub in ("embeddings", "ids"):
        (textual / sub).mkdir(parents=True, exist_ok=True)
    order = rng.permutation(rows)
    for number, start in enumerate(range(0, rows, batch)):
        chosen = order[start:start + batch]
        np.save(textual / "embeddings" / f"{number:09d}.npy",
                unit_rows(rng.standard_normal((len(chosen), DIMENSION), np.float32)))
        np.save(textual / "ids" / f"{number:09d}.npy", np.array([ids[i] for i in chosen]))
    (textual / MANIFEST).write_text(json.dumps({"model": MODEL}))
    done.write_text(json.dumps({"rows": rows, "batch": batch}))


def run_scores(work: Path, module=None) -> None:
    ids = pa.chunked_array([pq.read_table(work / "metadata.parquet", columns=["id"]).column("id").combine_chunks()])
    embed = EmbedSettings(model=MODEL, model_dir="", device="cpu", batch_size=128)
    (module.scores_table if module else scores_table)(ids, str(work / "index"), str(work / "metadata.parquet"), MODEL,
                                                      "", Prompts(str(work / "textual"), embed))


def run_baseline(work: Path) -> None:
    """scores.py as it was before (BEFORE, from git): step 3''s vectors read whole, then each image's taken."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:prompt_search/index/scores.py"], check=True,
                            capture_output=True, text=True).stdout
    path = work / "scores_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("scores_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run_scores(work, module)


def child(work: Path, which: str) -> dict:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, f"--work={work}", f"--child={which}"], check=True,
                         capture_output=True, text=True).stdout
    return {**json.loads(out.splitlines()[-1]), "wall_s": time.perf_counter() - started}


def vm_hwm_gib() -> float:
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/scores_bench"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--child", default="")
    args = parser.parse_args()
    if args.child:
        (run_scores if args.child == "scores" else run_baseline)(args.work)
        print(json.dumps({"peak_gib": vm_hwm_gib()}))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    build(args.work, args.rows, args.batch)
    print(f"data: {args.rows:,} images and prompts, {args.batch} prompt vectors a file "
          f"({time.perf_counter() - started:.0f} s to make or find); {platform.node()}, {os.cpu_count()} cores")
    baseline, scores = child(args.work, "baseline"), child(args.work, "scores")
    print("| run | peak RSS | wall |\n|---|---|---|")
    for name, found in ((f"scores_table before ({BEFORE}: read whole)", baseline),
                        ("scores_table now (a file at a time)", scores)):
        print(f"| {name} | {found['peak_gib']:.2f} GiB | {found['wall_s']:.1f} s |")
    print(f"peak RSS ratio (scores_table / before): {scores['peak_gib'] / baseline['peak_gib']:.2f}x; "
          f"wall ratio {scores['wall_s'] / baseline['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
