"""Issue 30's targets for step 4's keyword index and the hybrid mode, ratios against baselines of the same run.

Run:  .venv/bin/python benchmarks/bench_keyword.py --work=/tmp/kwbench --sizes=1000,1000000,10000000 --hybrid=1000000
      (--queries=200 --exact=100; the prompts are cached in --work between runs; --keep reuses what the last run
      built, and its build measurements, to time the queries again)

Data: N prompts generated as bench_keyword_engines.py makes them (the 998 real prompts of 1k.csv, then prompts of
3-15 of their comma-separated phrases drawn with a seeded RNG), in an item table as step 4 writes it (items.arrow).

  build    build_keywords (step 4's own code) over the item table of N prompts, in a child process: wall time and
           peak memory; at --hybrid, the whole step 4' (create_index's build_index over N random 512-d vectors with
           the prompts) and the keyword index's share of it
  open     KeywordIndex.open in a fresh process (its first open), then the median of 30 more; ratio to N=1000
  query    the keyword mode as the server runs it (search/hybrid.ranked, no dedupe: it reads vectors, not words):
           single rare words, 2-3 words, quoted phrases, pasted real prompts; p50 and p99
  hybrid   at --hybrid, ranked in the semantic and the hybrid mode for the same 200 texts and query vectors (noisy
           copies of stored vectors), dedupe as the server's default; the hybrid p50 minus the semantic p50
  exact    at --hybrid, --exact quoted phrases: the rows found against a brute-force scan of the analysed prompts
           (recall and precision); and the hybrid order against a reference RRF of the same two rankings
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_keyword_engines import generate, make_queries, originals  # noqa: E402

from prompt_search.index.keyword_index import KeywordIndex, build_keywords  # noqa: E402
from prompt_search.index.keywords import parse_query, words  # noqa: E402
from prompt_search.items import BATCH_ROWS  # noqa: E402
from prompt_search.search.core import SearchIndex, find_hits, open_index  # noqa: E402
from prompt_search.search.hybrid import FUSION_DEPTH, Wanted, ranked  # noqa: E402

DIMENSION = 512  # ViT-B/32's
PAGE = 20  # results per query, as the page asks 40 and step 5 5
DEDUPE = 0.94  # config.DEDUPE_THRESHOLD


def prompts_file(work: Path, n: int) -> Path:
    path = work / f"prompts-{n}.txt"
    if not path.exists():
        generate(n, path)
    return path


def item_table(work: Path, n: int) -> Path:
    """items.arrow of n rows (id, prompt) in step 4's batches, in work/set-n."""
    folder = work / f"set-{n}"
    path = folder / "items.arrow"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema({"id": pa.string(), "prompt": pa.string()})
    with open(prompts_file(work, n), encoding="utf-8") as f, pa.OSFile(str(path) + ".tmp", "wb") as sink, \
            ipc.new_file(sink, schema) as writer:
        batch, start = [], 0
        for line in f:
            batch.append(line.rstrip("\n"))
            if len(batch) == BATCH_ROWS:
                writer.write_batch(_batch(batch, start, schema))
                start, batch = start + len(batch), []
        if batch:
            writer.write_batch(_batch(batch, start, schema))
    os.replace(str(path) + ".tmp", path)
    return path


def _batch(prompts: list[str], start: int, schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([f"{i:016x}" for i in range(start, start + len(prompts))]),
                                       pa.array(prompts)], schema=schema)


def child(args: list[str]) -> dict:
    """This script in a fresh process (--child ...): its JSON answer, with its wall time and peak memory."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # GiB: the largest child so far
    return answer | {"wall_s": time.perf_counter() - start, "peak_children_gib": peak}


def run_child(kind: str, folder: str) -> dict:
    if kind == "build":
        start = time.perf_counter()
        built = build_keywords(os.path.join(folder, "items.arrow"), folder)
        return built | {"build_s": time.perf_counter() - start,
                        "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    source = {"words": 1}
    start = time.perf_counter()
    KeywordIndex.open(folder, source)
    first = time.perf_counter() - start
    again = []
    for _ in range(30):
        start = time.perf_counter()
        KeywordIndex.open(folder, source)
        again.append(time.perf_counter() - start)
    return {"first_open_ms": first * 1e3, "open_ms": statistics.median(again) * 1e3}


def texts(count: int) -> list[tuple[str, str]]:
    """(kind, query) pairs: rare single words, 2-3 words, quoted phrases (bench_keyword_engines' own), and pasted
    real prompts."""
    queries, _ = make_queries(count, 0)
    queries = [(kind, query.replace(" OR ", " ").replace(" AND ", " ")) for kind, query in queries]
    pasted = random.Random(30).sample([p for p in originals() if words(p)], k=max(1, count // 5))
    return queries[:count - len(pasted)] + [("pasted", prompt) for prompt in pasted]


def timed(function, repeat: int = 1) -> tuple[float, object]:
    start = time.perf_counter()
    for _ in range(repeat):
        result = function()
    return (time.perf_counter() - start) / repeat * 1e3, result


def percentiles(times: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def keyword_queries(keywords: KeywordIndex, queries: list[tuple[str, str]]) -> dict:
    """The keyword mode's time per query (ranked over the keyword index alone), by kind and over all."""
    searched = SearchIndex("", None, None, None, "", False, keywords=keywords)  # the keyword mode reads only these
    parsed = [(kind, parse_query(text)) for kind, text in queries]
    for _, query in parsed[:20]:  # warm: the first queries page in the index's files
        ranked(searched, None, Wanted(PAGE, 0, 1.0, "keyword", query))
    by_kind: dict[str, list[float]] = {}
    for kind, query in parsed:
        ms, _ = timed(lambda q=query: ranked(searched, None, Wanted(PAGE, 0, 1.0, "keyword", q)))
        by_kind.setdefault(kind, []).append(ms)
    everything = [ms for times in by_kind.values() for ms in times]
    return {"all": percentiles(everything)} | {kind: percentiles(times) for kind, times in by_kind.items()}


def hybrid(work: Path, n: int, queries: list[tuple[str, str]], exact: int, keep: bool) -> dict:
    """Step 4' at n (random vectors, the generated prompts): its time and the keyword index's share; then the
    semantic and the hybrid mode over the same queries; then the exactness checks."""
    from scaffolding import index_vectors

    out = work / f"step4-{n}"
    prompts = [line.rstrip("\n") for line in open(prompts_file(work, n), encoding="utf-8")]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, DIMENSION), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    infos_file = out / "build.json"
    if not (keep and infos_file.exists()):
        start = time.perf_counter()
        index_vectors(str(out), "textual", vectors, [f"{i:016x}" for i in range(n)], "ViT-B/32", {"prompt": prompts})
        step = time.perf_counter() - start
        infos = json.loads((out / "knn_indices" / "textual" / "infos.json").read_text())
        infos_file.write_text(json.dumps({"step4_s": step, "keyword_s": infos["keyword seconds"],
                                          "index_key": infos["index_key"], "keywords": infos["keywords"]}))
    report = json.loads(infos_file.read_text())
    searched = open_index(str(out / "knn_indices" / "textual"))
    parsed = [parse_query(text) for _, text in queries]
    query_vectors = vectors[rng.integers(n, size=len(parsed))] + 0.05 * rng.standard_normal(
        (len(parsed), DIMENSION), dtype=np.float32)
    query_vectors /= np.linalg.norm(query_vectors, axis=1, keepdims=True)
    modes: dict[str, list[float]] = {"semantic": [], "hybrid": []}
    for round_ in range(2):  # the first round warms the files; the second is timed, the modes interleaved
        for query, vector in zip(parsed, query_vectors, strict=True):
            for mode in modes:
                ms, _ = timed(lambda m=mode, q=query, v=vector: ranked(searched, v, Wanted(PAGE, 0, DEDUPE, m, q)))
                if round_:
                    modes[mode].append(ms)
    report |= {mode: percentiles(times) for mode, times in modes.items()}
    report["hybrid_minus_semantic_p50_ms"] = report["hybrid"]["p50_ms"] - report["semantic"]["p50_ms"]
    report["exact"] = exactness(searched, prompts, exact)
    report["rrf_equal"] = rrf_check(searched, parsed[:50], query_vectors[:50])
    return report


def exactness(searched: SearchIndex, prompts: list[str], count: int) -> dict:
    """Quoted phrases cut from the prompts: rows found against a brute-force scan of the analysed prompts."""
    rng = random.Random(1)
    analysed = [" " + " ".join(words(prompt)) + " " for prompt in prompts]
    found = expected = true = 0
    for _ in range(count):
        pieces = words(rng.choice(prompts[:998]))
        start = rng.randrange(len(pieces))
        phrase = tuple(pieces[start:start + rng.randint(1, 4)])
        needle = " " + " ".join(phrase) + " "
        holding = {at for at, text in enumerate(analysed) if needle in text}
        query = parse_query('"' + " ".join(phrase) + '"')
        positions, _ = searched.keywords.search(query, max(searched.keywords.count(query), 1))
        hits = set(positions.tolist())
        found, expected, true = found + len(hits), expected + len(holding), true + len(hits & holding)
    return {"phrases": count, "rows_expected": expected, "recall": true / max(expected, 1),
            "precision": true / max(found, 1)}


def rrf_check(searched: SearchIndex, parsed: list, vectors: np.ndarray) -> bool:
    """The hybrid mode's order (no dedupe) equals RRF (constant 60) of the CLIP and keyword rankings, by score."""
    for query, vector in zip(parsed, vectors, strict=True):
        if query.whole() is not None and searched.keywords.exact(query.whole()).size:
            continue  # a pasted prompt's own rows go first by design, not by RRF
        clip = [hit.position for hit in find_hits(searched, vector, FUSION_DEPTH, 1.0)]
        by_words = searched.keywords.search(query, FUSION_DEPTH)[0].tolist()
        scores: dict[int, float] = {}
        for ranking in (clip, by_words):
            for rank, position in enumerate(ranking, 1):
                scores[position] = scores.get(position, 0.0) + 1 / (60 + rank)
        hits = ranked(searched, vector, Wanted(100, 0, 1.0, "hybrid", query))
        expected = sorted(scores.values(), reverse=True)[:100]
        if not np.allclose([hit.score for hit in hits], expected, atol=1e-7) or any(
                abs(hit.score - scores[hit.position]) > 1e-7 for hit in hits):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/kwbench")
    parser.add_argument("--sizes", default="1000,1000000,10000000")
    parser.add_argument("--hybrid", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="reuse the keyword indices and step 4' set the last run "
                        "built, and its measurements of them (to time queries again after a change of the query path)")
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(*args.child)))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    queries = texts(args.queries)
    report: dict = {"machine": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for n in map(int, args.sizes.split(",")):
        folder = item_table(work, n).parent
        built_file = folder / "build.json"
        if args.keep and built_file.exists() and (folder / "keywords").exists():  # the last run's build, as measured
            built = json.loads(built_file.read_text())
        else:
            if (folder / "keywords").exists():  # built again: its time is what is measured
                shutil.rmtree(folder / "keywords")
            built = child(["build", str(folder)])
            built_file.write_text(json.dumps(built))
        opened = child(["open", str(folder)])
        keywords = KeywordIndex.open(str(folder), {"words": built["words"]})
        size = sum(f.stat().st_size for f in (folder / "keywords").iterdir()) / 1e6
        report[n] = {"build": built, "open": opened, "size_mb": size, "queries": keyword_queries(keywords, queries)}
        print(json.dumps({n: report[n]}), flush=True)
    sizes = [n for n in report if isinstance(n, int)]
    small, large = min(sizes), max(sizes)
    report["open_ratio_large_to_small"] = report[large]["open"]["open_ms"] / report[small]["open"]["open_ms"]
    if args.hybrid:
        report["hybrid"] = hybrid(work, args.hybrid, queries, args.exact, args.keep)
        report["keyword_share_of_step4"] = report["hybrid"]["keyword_s"] / (
            report["hybrid"]["step4_s"] - report["hybrid"]["keyword_s"])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
