"""Issues 17 and 26 at scale: step 4, recall, the query script and hit lookups on synthetic collections.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/bench_scale.py --work-dir=/tmp/scale \
        [--vectors=10000,100000,200000,1000000] [--lookup-rows=10000000] [--queries=200] [--script-runs=3]

Each size of --vectors is measured in turn, in --work-dir/<size>.

The collection is laid out as step 3 and step 1 write it: --vectors clustered 512-d unit vectors in
batch files of 128 with ids (URL digests), and a metadata table with a row for each id. Clustered:
each vector is one of 20,000 random centres plus noise, so that neighbours are close and many;
synthetic clusters are harder for an index than real CLIP vectors may be, so take recall as a stress
figure. Queries: noisy copies of stored vectors, and cross-modal ones (a stored vector plus one fixed
offset of norm 0.8, as text and image embeddings sit in different regions of CLIP's space).

Prints, each measured in this run, with the load average beside each ratio:
  step 4 at each size: wall time and peak memory of create_visual_knn_indices.py, the index it chose and its
  tuned search; its floor: one exact pass assigning every vector to its list, timed as a faiss matrix product
  (a sample of the vectors against as many random centroids as the index has lists), and step 4 / floor;
  recall@10 against exact search, of the index alone and with our search (re-ranking), the time of each per
  query and their ratio (default settings: the recall target is 0.99 for both kinds);
  the query script end to end (full-size ViT-B/32 with random weights, ONNX), at 1k and at the size, in
  interleaved pairs (1k, size, 1k, size...): the median of the pairs' differences and ratios;
  looking up 20 hits in an item table of --lookup-rows rows against one of 1k rows, and its memory (0: skipped).
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # scaffolding.py: random-weight models, the real data files

from prompt_search.embedding.set_writer import MANIFEST  # noqa: E402
from prompt_search.layout import METADATA_FILE  # noqa: E402
from prompt_search.models.names import model_fingerprint  # noqa: E402
from prompt_search.sources.metadata_table import PARQUET_OPTIONS, SCHEMA  # noqa: E402

DIM = 512
BATCH = 128
TEXT_BATCH = 1024  # prompts a step 3' batch file holds
CENTRES = 20_000
MAXRSS = "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; " \
         "print('maxrss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)"


def vectors_of(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 0.04, (n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_collection(out: Path, n: int, model: str, seed: int = 0) -> None:
    """out/visual_embeddings, out/textual_embeddings and out/metadata/metadata.parquet for n items, written a batch
    at a time. Half the rows repeat another row's prompt (open-prompts repeats many), and step 3' has embedded each
    distinct prompt once, as a user runs the steps: step 4 then scores adherence from those vectors."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CENTRES, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    ids = [hashlib.blake2b(f"https://example.com/{seed}/{i}.png".encode(), digest_size=8).hexdigest()
           for i in range(n)]
    prompts = -(-n // 2)
    draw = partial(vectors_of, rng, centres)
    write_set(out / "visual_embeddings", ids, BATCH, draw, model)
    write_set(out / "textual_embeddings", ids[:prompts], TEXT_BATCH, draw, model)
    write_metadata(out / METADATA_FILE, ids, seed, prompts)


def write_set(folder: Path, ids: list[str], batch_size: int, vectors, model: str) -> None:
    """An embeddings set as step 3 or 3' writes it: a vector for each id, from vectors(count), in batch files."""
    for sub in ("embeddings", "ids", "batches"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for batch, start in enumerate(range(0, len(ids), batch_size)):
        chunk = vectors(min(batch_size, len(ids) - start))
        np.save(folder / "embeddings" / f"{batch:09d}.npy", chunk)
        np.save(folder / "ids" / f"{batch:09d}.npy", np.array(ids[start : start + len(chunk)]))
        (folder / "batches" / f"{batch:09d}.json").write_text(json.dumps({"count": len(chunk), "skipped": []}))
    (folder / MANIFEST).write_text(json.dumps({"model": model_fingerprint(model), "count": len(ids)}))


class StoredVectors:
    """The collection's float32 vectors, read from its batch files as rows or slices are asked for: at 10M they
    (20 GB) need not fit in memory. Row i is the index's vector i (step 4 reads the files in name order)."""

    def __init__(self, folder: Path):
        self.files = sorted(folder.glob("*.npy"))
        self.count = sum(np.load(path, mmap_mode="r").shape[0] for path in self.files)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, rows):
        if isinstance(rows, slice):  # whole batch files of BATCH rows, as exact_top asks for them
            start, stop, _ = rows.indices(self.count)
            return np.concatenate([np.load(path) for path in self.files[start // BATCH : -(-stop // BATCH)]])
        return np.stack([np.load(self.files[row // BATCH], mmap_mode="r")[row % BATCH] for row in rows])


def write_metadata(path: Path, ids: list[str], seed: int, prompts: int = 0) -> None:
    """A metadata table in step 1's schema with a row for each id; row i's prompt is prompt i % prompts (all
    distinct when prompts is 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    words = "castle robot portrait neon city ocean dragon forest cyberpunk painting of a the in with".split()
    with pq.ParquetWriter(path, SCHEMA, **PARQUET_OPTIONS) as writer:
        for start in range(0, len(ids), 65_536):
            chunk = ids[start : start + 65_536]
            rows = range(start, start + len(chunk))
            columns = {
                "id": chunk,
                "url": [f"https://example.com/{seed}/{i}.png" for i in rows],
                "prompt": [" ".join(words[(p * k) % len(words)] for k in range(1, 12)) + f" {p}"
                           for p in (i % (prompts or len(ids)) for i in rows)],
                "width": [512] * len(chunk), "height": [768] * len(chunk), "seed": list(rows),
                "csv_line": [i + 2 for i in rows],
            }
            writer.write_table(pa.table({f.name: columns.get(f.name, pa.nulls(len(chunk), f.type))
                                         for f in SCHEMA}, schema=SCHEMA))


def run_measured(args: list[str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, peak memory GiB of the process tree's largest process, stdout) of a script run."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", MAXRSS, sys.executable, *args], cwd=cwd, env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    maxrss = int(result.stderr.rsplit("maxrss_kib", 1)[1].split()[0])
    return wall, maxrss / 2**20, result.stdout


def recall_at_10(found: list[list[int]], exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)]))


def measure_recall(out: Path, vectors: StoredVectors, queries: int, say) -> None:
    import faiss

    from prompt_search.index.choice import exact_top
    from prompt_search.search.core import find_hits, open_index, search

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(1)
    picked = vectors[np.sort(rng.choice(len(vectors), queries, replace=False))]
    offset = rng.normal(size=DIM).astype(np.float32)
    offset *= 0.8 / np.linalg.norm(offset)
    noisy = picked + rng.normal(0, 0.03, picked.shape).astype(np.float32)
    kinds = {"noisy copies": noisy, "cross-modal": picked + offset}
    searched = open_index(str(out / "knn_indices" / "visual"))
    infos = json.loads((out / "knn_indices" / "visual" / "infos.json").read_text())
    say(f"  index {infos['index_key']} ({infos.get('index_param')}, {infos.get('search', 'autofaiss tuned')}; "
        f"recall@10 {infos.get('recall@10')} on step 4's own queries), lossy codes (re-ranked): {searched.rerank}, "
        f"candidates {searched.candidates if searched.rerank else '-'}")
    for kind, q in kinds.items():
        q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
        exact = exact_top(vectors, q, 10)
        # the index alone; our search (re-ranked, folded); the same with the item rows read: in turns, query by
        # query, so that the machine's load falls on the three alike
        ways = (lambda row: searched.index.search(row[None], 10)[1][0].tolist(),
                lambda row: [hit.position for hit in find_hits(searched, row, 10, 1.0)],
                lambda row: [hit.position for hit in search(searched, row, 10, 1.0)])
        for row in q:  # once untimed: the rows each way reads are in memory for all three alike, as in a server
            for way in ways:
                way(row)
        seconds, found = [0.0] * len(ways), [[] for _ in ways]
        for row in q:
            for i, way in enumerate(ways):
                start = time.perf_counter()
                found[i].append(way(row))
                seconds[i] += time.perf_counter() - start
        alone, ours, described = (total / len(q) for total in seconds)
        plain, recall = recall_at_10(found[0], exact), recall_at_10(found[1], exact)
        say(f"  {kind:>12}: recall@10 index alone {plain:.3f} ({alone * 1e3:.2f} ms/query), ours {recall:.3f} "
            f"({ours * 1e3:.2f} ms/query, {ours / alone:.2f}x; with the 10 item rows read {described * 1e3:.2f} ms, "
            f"{described / alone:.2f}x; load average {os.getloadavg()[0]:.1f})")


def measure_script(small: Path, big: Path, model: str, runs: int, image: Path, say) -> None:
    """The query script at 1k and at the size in interleaved pairs, so that the machine's load falls on both alike."""
    def args(out: Path) -> list[str]:
        return [str(REPO / "test_visual_knn_index.py"), f"--OUT_DIR={out}", f"--MODEL={model}",
                "--COMPARE_WITH_TORCH=False", f"--INPUT_IMG_PATH={image}", "--INPUT_PROMPT=a castle in the clouds"]

    for out in (small, big):
        run_measured(args(out), out.parent)  # the ONNX export and its optimised graphs, on first use
    pairs = []
    for _ in range(runs):
        pairs.append((run_measured(args(small), small.parent)[0], run_measured(args(big), big.parent)[0],
                      os.getloadavg()[0]))
    for one_k, sized, load in pairs:
        say(f"  1k {one_k:.2f} s, this size {sized:.2f} s: {sized - one_k:+.2f} s, {sized / one_k:.2f}x "
            f"(load average {load:.1f})")
    say(f"  median of {runs} pairs: {statistics.median(b - a for a, b, _ in pairs):+.2f} s, "
        f"{statistics.median(b / a for a, b, _ in pairs):.2f}x; "
        f"1k median {statistics.median(a for a, _, _ in pairs):.2f} s")


def measure_floor(out: Path, count: int, say) -> float:
    """Seconds of one exact pass assigning count vectors to the index's lists, as a faiss matrix product."""
    import faiss

    lists = faiss.extract_index_ivf(faiss.read_index(str(out / "knn_indices" / "visual" / "knn.index"))).nlist
    if lists == 1:
        say("  floor: none, an exact index has no lists to assign vectors to")
        return 0.0
    faiss.omp_set_num_threads(os.cpu_count())  # as step 4 runs (measure_recall, run before, sets one thread)
    rng = np.random.default_rng(4)
    centroids = rng.normal(size=(lists, DIM)).astype(np.float32)
    sample = rng.normal(size=(min(count, 100_000), DIM)).astype(np.float32)
    quantiser = faiss.IndexFlatIP(DIM)
    quantiser.add(centroids)
    start = time.perf_counter()
    quantiser.search(sample, 1)
    floor = (time.perf_counter() - start) * count / len(sample)
    say(f"  floor: assigning {count:,} vectors to {lists:,} lists, {floor:.1f} s ({len(sample):,} timed, "
        f"{faiss.omp_get_max_threads()} threads; load average {os.getloadavg()[0]:.1f})")
    return floor


def measure_lookup(work: Path, rows: int, say) -> None:
    """Item tables of 1k and `rows` rows: time to open and to describe 20 random hits, and the memory it takes."""
    code = (
        "import sys, time, resource, numpy as np\n"
        "from prompt_search.items import ItemTable\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "start = time.perf_counter(); table = ItemTable(sys.argv[1]); opened = time.perf_counter() - start\n"
        "rng = np.random.default_rng(0); times = []\n"
        "for _ in range(50):\n"
        "    positions = rng.integers(0, len(table), 20).tolist()\n"
        "    start = time.perf_counter(); rows = table.rows(positions); times.append(time.perf_counter() - start)\n"
        "grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024\n"
        "print(len(table), opened * 1e3, float(np.median(times)) * 1e3, max(times) * 1e3, grown)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for size in (1000, rows):
        path = make_items(work, size, say)
        found = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                               check=True).stdout.split()
        say(f"  {int(found[0]):>10,} rows: open {float(found[1]):.2f} ms, 20 hits median {float(found[2]):.2f} ms "
            f"(max {float(found[3]):.2f} ms), memory grown {float(found[4]):.1f} MiB; items.arrow "
            f"{path.stat().st_size / 1e6:,.1f} MB, its ids {id_bytes(path) / 1e6:,.1f} MB")


def id_bytes(path: Path) -> int:
    """Bytes of the id column in an items.arrow (its buffers, memory-mapped: nothing else is read)."""
    import pyarrow.ipc as ipc

    column = ipc.open_file(pa.memory_map(str(path))).read_all().column("id")
    return sum(buffer.size for chunk in column.chunks for buffer in chunk.buffers() if buffer is not None)


def make_items(work: Path, size: int, say) -> Path:
    """An items.arrow of size rows made by step 4's own write_items, joined with a metadata table of size rows."""
    path = work / f"items-{size}.arrow"
    if path.exists():
        return path
    ids = [hashlib.blake2b(f"https://example.com/l/{i}.png".encode(), digest_size=8).hexdigest() for i in range(size)]
    metadata = work / f"metadata-{size}.parquet"
    write_metadata(metadata, ids, 7)
    order = np.random.default_rng(2).permutation(size)  # index order is not the table's order
    ids_in_index_order = pa.chunked_array([pa.array(np.array(ids)[order[s : s + 1_000_000]])
                                           for s in range(0, size, 1_000_000)])
    del ids
    code = ("import sys, pyarrow.parquet as pq\nfrom prompt_search.items import write_items\n"
            "write_items(sys.argv[2], pq.read_table(sys.argv[1]).column('id'), [sys.argv[3]], sys.argv[4])\n")
    order_file = work / f"order-{size}.parquet"
    pq.write_table(pa.table({"id": ids_in_index_order}), order_file)
    wall, gib, _ = run_measured(["-c", code, str(order_file), str(path), str(metadata), str(work)], work)
    say(f"  write_items at {size:,} rows: {wall:.1f} s, peak {gib:.2f} GiB")
    return path


def measure_size(work: Path, count: int, model: Path, image: Path, args: argparse.Namespace, say) -> None:
    """Step 4, its floor, recall and the query script at count vectors, in work/<count>."""
    big, small = work / str(count) / "big", work / "small"
    start = time.perf_counter()
    if not args.skip_build:
        make_collection(big, count, str(model))
    say(f"\n{count:,} vectors (collection made in {time.perf_counter() - start:.0f} s), step 4:")
    if not args.skip_build:
        wall, gib, printed = run_measured([str(REPO / "create_visual_knn_indices.py"), f"--OUT_DIR={big}",
                                            f"--MODEL={model}"], work)
        say(f"  create_visual_knn_indices.py: {wall:.0f} s, peak {gib:.2f} GiB; it said: {printed.splitlines()[0]}")
        infos = json.loads((big / "knn_indices" / "visual" / "infos.json").read_text())
        if "train seconds" in infos:  # step 4's own build (index/fast_scan.py): where its time went
            say(f"  of which training on {infos['train points']:,} vectors {infos['train seconds']} s, adding them all "
                f"{infos['add seconds']} s")
        say(f"  the item table with the scores {infos['items seconds']:.1f} s, the keyword index "
            f"{infos['keyword seconds']:.1f} s")
        floor = measure_floor(big, count, say)
        if floor:
            say(f"  step 4 / floor: {wall / floor:.1f}x (load average {os.getloadavg()[0]:.1f})")

    say(f"recall@10 against exact search, {args.queries} queries of each kind, 1 thread:")
    measure_recall(big, StoredVectors(big / "visual_embeddings" / "embeddings"), args.queries, say)

    say(f"the query script end to end, 1k and {count:,} vectors in {args.script_runs} interleaved pairs "
        "(after the first use's export):")
    measure_script(small, big, str(model), args.script_runs, image, say)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--vectors", default="10000,100000,200000,1000000", help="sizes, comma-separated")
    parser.add_argument("--lookup-rows", type=int, default=10_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--script-runs", type=int, default=3, help="interleaved pairs of query script runs")
    parser.add_argument("--skip-build", action="store_true", help="reuse the indices a previous run built")
    args = parser.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        print(line, flush=True)

    from PIL import Image
    from scaffolding import save_random_clip

    model = work / "vit-b-32-random.pt"
    if not model.exists():
        save_random_clip(str(model), full_size=True)
    image = work / "query.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(image)
    say(f"bench_scale: {args.vectors} vectors, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}")
    make_collection(work / "small", 1000, str(model), seed=5)
    run_measured([str(REPO / "create_visual_knn_indices.py"), f"--OUT_DIR={work / 'small'}", f"--MODEL={model}"],
                 work)
    for count in (int(size) for size in args.vectors.split(",")):
        measure_size(work, count, model, image, args, say)

    if args.lookup_rows:
        say("\nlooking up 20 hits in the item table:")
        measure_lookup(work, args.lookup_rows, say)


if __name__ == "__main__":
    main()
