"""Step 4's own build of a fast-scan PQ index from vectors.npy: trained on a sample drawn across the collection,
then every vector added in chunks.

autofaiss trains an inverted file on the collection's first 100 vectors a list (faiss's 10 k-means rounds: at
10M vectors and 16,384 lists, 1.6 exact passes' worth over the collection before a vector is added), and its
merge of distributed parts cannot take fast-scan codes (benchmarks/RESULTS.md, issue 26). Here the lists are
trained on TRAIN_POINTS_PER_LIST random vectors a list, drawn from the whole collection, with the same 10 rounds
(0.64 of a pass at 10M), and adding them assigns each vector exactly to its list once."""

import time

import numpy as np

TRAIN_POINTS_PER_LIST = 39  # faiss's least without a warning: k-means' cost, and so the build's, scales with it
CODE_TRAIN_POINTS = 65_536  # the fewest vectors the codes (4-bit product quantisers) are trained on
ADD_ROWS = 65_536  # vectors read from vectors.npy and added at a time (256 MB of float32 at 1,024-d)
SAMPLE_SEED = 0  # the training sample is the same for the same collection: a rebuild gives the same index


def build_fast_scan(vectors_file: str, key: str) -> tuple[object, dict]:
    """The faiss index key trained on a sample of vectors_file (float16 rows), with them all added, and the
    build's account for infos.json (in autofaiss's words where it has them)."""
    import faiss

    vectors = np.load(vectors_file, mmap_mode="r")
    count, dimension = vectors.shape
    index = faiss.index_factory(dimension, key, faiss.METRIC_INNER_PRODUCT)
    lists = faiss.extract_index_ivf(index).nlist
    started = time.monotonic()
    sample = training_sample(vectors, max(TRAIN_POINTS_PER_LIST * lists, CODE_TRAIN_POINTS))
    index.train(sample)
    trained = time.monotonic()
    del sample
    for start in range(0, count, ADD_ROWS):
        index.add(np.asarray(vectors[start : start + ADD_ROWS], dtype=np.float32))
    added = time.monotonic()
    return index, {"index_key": key, "index_param": "nprobe=1", "nb vectors": int(index.ntotal),
                   "vectors dimension": int(dimension),
                   "train points": min(count, max(TRAIN_POINTS_PER_LIST * lists, CODE_TRAIN_POINTS)),
                   "train seconds": round(trained - started, 1), "add seconds": round(added - trained, 1)}


def training_sample(vectors: np.ndarray, size: int) -> np.ndarray:
    """size rows drawn at random across vectors (all of them when fewer), in file order, as float32."""
    if size >= len(vectors):
        return np.asarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(vectors), size, replace=False))
    return np.asarray(vectors[rows], dtype=np.float32)
