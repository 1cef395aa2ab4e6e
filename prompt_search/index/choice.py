"""Step 4's choice of index for a collection, and nprobe tuned to a recall target on the built index.

Measured on clustered synthetic vectors (benchmarks/bench_scale.py; benchmarks/RESULTS.md, issue 26): where a
collection is small, or its clusters are, a query's true top 10 reach beyond its own cluster to vectors that
are only slightly nearer than the rest, scattered over every inverted list. An uncompressed IVF,Flat index must
then probe most of its lists to find them (200k vectors, IVF2048: recall@10 0.97 at nprobe 512, 40 ms a query),
and 8-bit PQ codes of 8 dimensions each cannot order them (100k vectors: 0.985 with 4,096 candidates re-ranked).
Hence:
  - exact search (one list scanned whole, IVF1,Flat) while a scan of every vector fits MAX_INDEX_QUERY_TIME_MS;
  - above that, 4-bit codes of each pair of dimensions (PQ{d/2}x4fs, faiss's fast scan: 2 bits a dimension),
    scanned in registers at about 8 GB/s a thread, their best candidates re-ranked against the stored float16
    vectors (search/core.py): every code while a scan of them fits the time budget (IVF1), else inverted lists with
    nprobe and the candidates the fewest that reach the recall target on this very index (tune_search).
    200k vectors: recall@10 1.000 both kinds with 400 candidates, 3 ms a query for every code. Step 4 builds it
    itself (index/fast_scan.py);
  - a Spark build keeps what autofaiss can merge from parts (distributed_choice).
"""

import math
from dataclasses import dataclass

import numpy as np

# Candidates a lossy index gives a query (search/core.py) for re-ranking: more than a dense region's near-equals,
# which PQ cannot order (recall@10 at 4M vectors: 0.955 with 100, 0.999 with 200, 1.0 with 400; RESULTS.md, issue 17).
RERANK_CANDIDATES = 400
CANDIDATE_STEPS = (RERANK_CANDIDATES, 1000, 2000, 4096)  # tried in turn until the recall target is reached
# Bytes of float32 vectors one thread scans a millisecond in a flat search: 10k 512-d vectors (20 MB) took
# 6.3-7.0 ms on the project's 2-core VM under load (RESULTS.md, issue 26). It sets where exact search ends.
FLAT_SCAN_BYTES_PER_MS = 3_000_000
# Bytes of 4-bit fast-scan codes one thread scans a millisecond: 200k vectors' 128-byte codes (25.6 MB) took 3.0 ms
# on the same VM (RESULTS.md, issue 26). It sets where every code is scanned and where inverted lists begin.
FAST_SCAN_BYTES_PER_MS = 8_000_000
PQ_SIZES = (256, 128, 64, 48, 32, 24, 16, 8, 4)  # bytes per vector a compressed index may take (autofaiss's list)
ID_BYTES = 8  # an inverted list stores each vector's position beside its code
TUNING_QUERIES = 100  # queries of each kind the recall is measured on after a build
NOISE_NORM = 0.7  # a noisy query: a stored vector plus noise of this norm (a picture's re-upload, a variant)
SHIFT_NORM = 0.8  # a shifted query: a stored vector plus a random offset of this norm, as a text query sits
#                   apart from the images it describes in CLIP's space (the modality gap)
SCAN_ROWS = 65_536  # stored vectors turned to float32 at a time by the exact search


@dataclass(frozen=True)
class IndexChoice:
    key: str  # the faiss index_factory string; "" leaves the choice to autofaiss
    exact: bool  # every vector is scanned: nothing to tune
    why: str
    own_build: bool = False  # built by step 4 itself (index/fast_scan.py), not autofaiss: fast-scan codes


def choose_index(count: int, dimension: int, max_memory: str, max_query_ms: float) -> IndexChoice:
    """The index step 4 builds for count vectors of this dimension, within the memory and query-time budgets."""
    from autofaiss.utils.cast import cast_memory_to_bytes

    budget = cast_memory_to_bytes(max_memory)
    flat_bytes = count * dimension * 4
    scan_ms = flat_bytes / FLAT_SCAN_BYTES_PER_MS
    if flat_bytes <= budget and scan_ms <= max_query_ms:
        return IndexChoice("IVF1,Flat", True, f"exact: a scan of every vector takes about {scan_ms:.1f} ms")
    key = fast_scan_key(count, dimension, budget, max_query_ms)
    if not key:
        return IndexChoice("", False, "no index of 4-bit codes fits MAX_INDEX_MEMORY: autofaiss's choice")
    scanned = "every code scanned" if key.startswith("IVF1,") else "inverted lists"
    return IndexChoice(key, False, f"a scan of every vector would take about {scan_ms:.0f} ms: 4-bit codes "
                                   f"({scanned}), their best candidates re-ranked", own_build=True)


def fast_scan_key(count: int, dimension: int, budget: int, max_query_ms: float) -> str:
    """IVF{lists},PQ{m}x4fs within budget bytes, or "" when none fits.

    m sub-quantisers of 4 bits: dimension/2 (2 dimensions each), fewer only where the memory budget says so.
    One list (every code scanned) while a scan of the codes fits max_query_ms, else 4 sqrt(count) lists rounded
    to a power of two (autofaiss's rule below 1M). Fewer lists would cost less to build (step 4's floor is one
    exact pass assigning every vector to its list), but at 1M vectors 1,024 lists held a query's top 10 so
    scattered that 256 of them scanned recalled 0.93, where 4,096 lists recalled 0.985 (RESULTS.md, issue 26).
    """
    fitting = [m for m in (dimension // 2, dimension // 4, dimension // 8)
               if m >= 2 and dimension % m == 0 and (m // 2 + ID_BYTES) * count <= budget]
    if not fitting:
        return ""
    code_bytes = fitting[0] // 2
    scan_ms = count * code_bytes / FAST_SCAN_BYTES_PER_MS
    lists = 1 if scan_ms <= max_query_ms else 2 ** round(math.log2(4 * math.sqrt(count)))
    return f"IVF{lists},PQ{fitting[0]}x4fs"


def distributed_choice(count: int, dimension: int, max_memory: str, max_query_ms: float) -> IndexChoice:
    """The index of a Spark build, whose parts autofaiss merges: exact as choose_index says, else autofaiss's
    uncompressed IVF,Flat, or OPQ/IVF/PQ codes where autofaiss would compress (its merge takes no fast-scan codes)."""
    from autofaiss.utils.cast import cast_memory_to_bytes

    chosen = choose_index(count, dimension, max_memory, max_query_ms)
    if chosen.exact or not chosen.own_build:
        return chosen
    if not _autofaiss_compresses(count, dimension, max_memory):
        return IndexChoice("", False, "a Spark build: autofaiss's choice (uncompressed inverted lists)")
    key = compressed_index_key(count, dimension, cast_memory_to_bytes(max_memory))
    if not key:
        return IndexChoice("", False, "no compressed index fits MAX_INDEX_MEMORY: autofaiss's choice")
    return IndexChoice(key, False, "a Spark build: PQ codes, their best candidates re-ranked")


def _autofaiss_compresses(count: int, dimension: int, max_memory: str) -> bool:
    """Whether autofaiss's own choice for this collection stores compressed (OPQ/PQ) codes."""
    from autofaiss.external.optimize import get_optimal_index_keys_v2

    chosen = get_optimal_index_keys_v2(count, dimension, max_memory, should_be_memory_mappable=True)
    return bool(chosen) and chosen[0].startswith("OPQ")


def compressed_index_key(count: int, dimension: int, budget: int) -> str:
    """OPQ{m}_{d},IVF{lists},PQ{m}x8 within budget bytes, or "" when none fits.

    Every vector sits in the list of its exact nearest centroid (a flat quantiser): autofaiss's own choice
    from 1M vectors on (OPQ256_768,IVF16384_HNSW32,PQ256x8) finds the lists with an HNSW graph, which put a
    fifth of the vectors in another list than their nearest and capped recall@10 near 0.93 whatever nprobe
    (RESULTS.md, issue 17). 4 sqrt(n) lists rounded to a power of two (autofaiss's own rule below 1M), at
    most dimension/8 bytes a vector. OPQ without reduction (OPQ{m}_{d}) is the form autofaiss builds with a
    flat quantiser under inner product.
    """
    fitting = [m for m in PQ_SIZES if m <= dimension // 8 and dimension % m == 0 and (m + ID_BYTES) * count <= budget]
    if not fitting:
        return ""
    lists = 2 ** round(math.log2(4 * math.sqrt(count)))
    return f"OPQ{fitting[0]}_{dimension},IVF{lists},PQ{fitting[0]}x8"


def tuning_queries(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """TUNING_QUERIES noisy and as many shifted copies of stored vectors (float32, unit length)."""
    rng = np.random.default_rng(seed)
    count, dimension = vectors.shape
    picked = np.asarray(vectors[np.sort(rng.choice(count, min(TUNING_QUERIES, count), replace=False))], np.float32)
    noise = rng.normal(size=picked.shape).astype(np.float32)
    shift = rng.normal(size=picked.shape).astype(np.float32)
    queries = np.concatenate([picked + NOISE_NORM * _unit(noise), picked + SHIFT_NORM * _unit(shift)])
    return _unit(queries)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The positions of each query's k most similar stored vectors (in no order), by a scan of them all."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(vectors), SCAN_ROWS):
        scores = queries @ np.asarray(vectors[start : start + SCAN_ROWS], np.float32).T
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best = np.concatenate([best, np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)], axis=1)
        if best.shape[1] > k:
            keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
            best_scores, best = np.take_along_axis(best_scores, keep, 1), np.take_along_axis(best, keep, 1)
    return best


def recall_at_10(index, queries: np.ndarray, exact: np.ndarray, candidates: int) -> float:
    """Share of each query's exact top 10 among the index's first candidates (what a re-rank can then order)."""
    _, found = index.search(queries, min(candidates, index.ntotal))
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


@dataclass(frozen=True)
class Tuned:
    nprobe: int
    candidates: int  # of the index, re-ranked by the query against the stored vectors (10 when not lossy)
    recall: float  # recall@10 on tuning_queries


def tune_search(index, vectors: np.ndarray, lossy: bool, target: float) -> Tuned:
    """Set the smallest nprobe, with the fewest candidates, whose recall@10 reaches target on tuning_queries.

    recall@10 is what the query gets: the exact top 10's share among the index's first 10 hits, or among its
    first candidates when its codes are lossy (then re-ranked exactly). Candidates: RERANK_CANDIDATES, more
    when even every list scanned does not reach the target (small clusters: a query's top 10 then reach vectors
    only slightly nearer than thousands of others, which PQ codes cannot order). nprobe: doubling, then
    bisection, as recall grows with the lists scanned. When nothing reaches the target: every list, and the
    most candidates.
    """
    import faiss

    ivf = faiss.extract_index_ivf(index)
    queries = tuning_queries(vectors)
    exact = exact_top(vectors, queries, 10)

    def recall(nprobe: int, candidates: int) -> float:
        ivf.nprobe = nprobe
        return recall_at_10(index, queries, exact, candidates)

    steps = CANDIDATE_STEPS if lossy else (10,)
    candidates = next((c for c in steps if recall(ivf.nlist, c) >= target), steps[-1])
    low, high = 0, 1  # recall(low) < target (low 0: none), recall(high) is measured next
    while high < ivf.nlist and recall(high, candidates) < target:
        low, high = high, min(2 * high, ivf.nlist)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if recall(middle, candidates) >= target else (middle, high)
    return Tuned(high, candidates, recall(high, candidates))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
