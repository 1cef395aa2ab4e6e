"""The search core of step 5 and the server: the index sets opened for queries, and the top hits of a vector in one,
near-identical ones folded together, described by their item table rows."""

import json
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

from prompt_search.errors import UserError
from prompt_search.index.choice import RERANK_CANDIDATES
from prompt_search.index.keyword_index import KeywordIndex
from prompt_search.index.keywords import KeywordQuery
from prompt_search.items import ItemTable
from prompt_search.layout import INDEX_FILE, ITEMS_FILE, SOURCE_FILE, VECTORS_FILE, indices_folder
from prompt_search.models.names import model_mismatch
from prompt_search.output_sets import local_set

MAX_CANDIDATES = 4096  # most hits searched for one query while near-identical ones are folded together
SIDES = {"images": "visual", "prompts": "textual"}  # what a query or request names -> its index set's folder


@dataclass
class Hit:
    rank: int
    score: float
    id: str
    prompt: str = ""
    url: str = ""
    path: str = ""  # the local image, when the hit is a downloaded or local image
    alike: int = 0  # lower-ranked results near-identical to this one (DEDUPE_THRESHOLD), shown as this one
    grouped: int = 0  # with one result per prompt: the other results of its prompt, shown as this one
    position: int = -1  # the vector's position in its index, and its row in the item table
    extra: dict = field(default_factory=dict)  # the item table's other columns (width, height, seed...)
    found_by: dict[str, float] = field(default_factory=dict)  # each ranking that found it ("clip", "keywords"): score


@dataclass
class Query:
    kind: str  # "text" or "image"
    value: str  # the prompt, or the image's path
    vector: np.ndarray
    note: str = ""
    hits: dict[str, list[Hit]] = field(default_factory=dict)  # per index: "images", "prompts"
    mode: str = "semantic"  # its ranking (search/hybrid.py): an image query's is always semantic
    keywords: KeywordQuery = KeywordQuery()  # a text query's words, for the keyword and hybrid modes


@dataclass
class SearchIndex:
    """An index set opened for queries: the index, its item table and stored vectors, memory-mapped read-only."""
    folder: str
    index: faiss.Index
    items: ItemTable
    vectors: np.ndarray  # float16: row i is the index's vector i
    model: str  # fingerprint of the model whose vectors it holds
    rerank: bool  # the index's codes are lossy: its candidates are re-ranked against the stored vectors
    candidates: int = RERANK_CANDIDATES  # how many, as step 4 tuned them to its recall target
    keywords: KeywordIndex | None = None  # the rows' prompts by their words; None in a set built before step 4 made it


def open_index(index_set: str) -> SearchIndex | None:
    """The index set published at index_set, or None when none was built."""
    folder = local_set(index_set)  # at a URL, this machine's copy of the set: faiss and Arrow memory-map it
    if folder is None:
        return None
    with open(os.path.join(folder, SOURCE_FILE)) as f:
        source = json.load(f)
    index = faiss.read_index(os.path.join(folder, INDEX_FILE), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    items = ItemTable(os.path.join(folder, ITEMS_FILE))
    vectors = _scattered_rows(os.path.join(folder, VECTORS_FILE))
    if not len(items) == len(vectors) == index.ntotal:
        raise UserError(f"{index_set} has {len(items)} items and {len(vectors)} vectors for {index.ntotal} indexed: "
                        "rebuild the index")
    return SearchIndex(index_set, index, items, vectors, source["model"], source.get("lossy", False),
                       source.get("candidates", RERANK_CANDIDATES), KeywordIndex.open(folder, source.get("keywords")))


def _scattered_rows(path: str) -> np.ndarray:
    """The array of an .npy file, memory-mapped read-only for reads of scattered rows.

    A query reads a few hundred rows anywhere in vectors.npy; the kernel's read-ahead around each fault made a
    re-rank of 400 rows from a cold file 4.5x slower (benchmarks/RESULTS.md, issue 17), so it is turned off.
    """
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = header(f)
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        offset = f.tell()
    if hasattr(mmap, "MADV_RANDOM"):  # Linux and macOS
        mapped.madvise(mmap.MADV_RANDOM)
    return np.ndarray(shape, dtype, buffer=mapped, offset=offset, order="F" if fortran_order else "C")


def open_sides(out_dir: str, model_name: str) -> dict[str, SearchIndex]:
    """The index sets of out_dir/knn_indices that were built, by side (SIDES), checked against the model."""
    index_dir = indices_folder(out_dir)
    opened = {side: open_index(os.path.join(index_dir, name)) for side, name in SIDES.items()}
    sides = {side: found for side, found in opened.items() if found}
    if not sides:
        raise UserError(f"no index in {index_dir}: run create_visual_knn_indices.py first (or make run)")
    for searched in sides.values():
        check_model(searched, model_name)
    return sides


def check_model(searched: SearchIndex, model_name: str) -> None:
    """Refuse to search an index with query vectors of another model than the one its vectors came from."""
    mismatch = model_mismatch(searched.model, model_name)
    if mismatch:
        raise UserError(f"{searched.folder} holds vectors {mismatch}")


def search(searched: SearchIndex, vector: np.ndarray, k: int, dedupe_threshold: float) -> list[Hit]:
    """The top k hits for vector, described by their item table rows (find_hits, then describe)."""
    return describe(searched, find_hits(searched, vector, k, dedupe_threshold))


def find_hits(searched: SearchIndex, vector: np.ndarray, k: int, dedupe_threshold: float,
              keep: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Hit]:
    """The top k hits for vector (positions and scores only), each standing also for the later hits at least
    dedupe_threshold similar to it; with keep, only candidates whose positions it marks True.

    Near-identical images (the black pictures of Stable Diffusion's safety filter, re-uploads) would
    otherwise fill a top-k, and a filter drops candidates: more are searched until k distinct kept ones
    are found, or MAX_CANDIDATES. A lossy index's candidates (at least searched.candidates) are re-ranked
    by their stored vectors.
    """
    wanted = k if dedupe_threshold >= 1 and keep is None else 4 * k
    while True:
        scores, labels, rows, exhausted = _candidates(searched, vector, wanted, keep)
        hits = collapse(searched, scores, labels, k, dedupe_threshold, rows)
        if len(hits) >= k or exhausted:
            return hits
        wanted *= 4


def clip_ranking(searched: SearchIndex, vector: np.ndarray, n: int,
                 keep: Callable[[np.ndarray], np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The top n candidates for vector that keep marks, nothing folded: their scores, positions and (when a lossy
    index's re-ranking read them) stored vectors, float32. Searched deeper while a filter drops rows, as find_hits."""
    wanted = n if keep is None else 4 * n
    while True:
        scores, labels, rows, exhausted = _candidates(searched, vector, wanted, keep)
        if len(labels) >= n or exhausted:
            return scores[:n], labels[:n], None if rows is None else rows[:n]
        wanted *= 4


def _candidates(searched: SearchIndex, vector: np.ndarray, wanted: int,
                keep: Callable[[np.ndarray], np.ndarray] | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bool]:
    """The index's top `wanted` (a lossy index's re-ranked), those keep marks; whether no more can be searched."""
    searched_k = min(max(wanted, searched.candidates) if searched.rerank else wanted, searched.index.ntotal)
    scores, labels = searched.index.search(vector[None].astype(np.float32), searched_k)
    scores, labels, rows = scores[0], labels[0], None
    if searched.rerank:
        scores, labels, rows = _rerank(searched, vector, labels[labels >= 0])
    else:
        scores, labels = scores[labels >= 0], labels[labels >= 0]
    if keep is not None:
        kept = keep(labels)
        scores, labels, rows = scores[kept], labels[kept], None if rows is None else rows[kept]
    return scores, labels, rows, searched_k >= min(searched.index.ntotal, MAX_CANDIDATES)


def describe(searched: SearchIndex, hits: list[Hit]) -> list[Hit]:
    """hits with their id, prompt, link, image path and other columns read from the item table, in O(len(hits))."""
    for hit, row in zip(hits, searched.items.rows([hit.position for hit in hits]), strict=True):
        hit.id, hit.prompt, hit.url, hit.path = row.pop("id"), row.pop("prompt", None) or "", \
            row.pop("url", None) or "", row.pop("path", None) or ""
        hit.extra = row
    return hits


def combine(parts: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """The normalised weighted sum of unit query vectors (a negative weight subtracts, as rclip's --subtract)."""
    total = sum(weight * np.asarray(vector, dtype=np.float32) for vector, weight in parts)
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm < 1e-6:
        raise UserError("the weighted query vectors cancel out or are not finite: change the weights or the vector")
    return (total / norm).astype(np.float32)


def _rerank(searched: SearchIndex, vector: np.ndarray, labels: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidates in the order of their exact similarity to vector, by the stored vectors: their scores,
    positions and stored vectors (float32, for collapse to fold without reading them again)."""
    positions = np.sort(labels)
    rows = np.asarray(searched.vectors[positions], dtype=np.float32)
    scores = rows @ vector.astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    return scores[order], positions[order], rows[order]


def collapse(searched: SearchIndex, scores: np.ndarray, labels: np.ndarray, k: int, threshold: float,
              rows: np.ndarray | None = None) -> list[Hit]:
    """The first k candidates not alike to an earlier one; rows: their stored vectors when already read."""
    found = labels >= 0
    scores, labels = scores[found], labels[found]
    if threshold >= 1:  # nothing is folded: the first k
        return [Hit(rank, float(score), "", position=int(label))
                for rank, (score, label) in enumerate(zip(scores[:k], labels[:k], strict=True), 1)]
    vectors = np.asarray(searched.vectors[labels], dtype=np.float32) if rows is None else rows[found].copy()
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    hits: list[Hit] = []
    kept: list[int] = []  # candidate number of each hit
    i = 0
    while i < len(labels) and len(hits) < k:
        alike = vectors[kept] @ vectors[i] >= threshold if kept else np.zeros(0, bool)
        if alike.any():
            hits[int(np.argmax(alike))].alike += 1
        else:
            kept.append(i)
            hits.append(Hit(len(hits) + 1, float(scores[i]), "", position=int(labels[i])))
        i += 1
    if kept:  # the rest of the candidates may still be alike to a hit, to be counted: to the first hit each is alike to
        alike = vectors[i:] @ vectors[kept].T >= threshold
        for first in np.argmax(alike[alike.any(axis=1)], axis=1):
            hits[int(first)].alike += 1
    return hits


def details(hit: Hit) -> str:
    """Seed (exact, whatever its size), size, steps, cfg scale and step 4's scores, those the hit's item table row
    has."""
    extra = hit.extra
    parts = [f"seed {extra['seed']}" if extra.get("seed") is not None else "",
             f"{extra['width']}×{extra['height']}" if extra.get("width") and extra.get("height") else "",
             f"{extra['num_steps']} steps" if extra.get("num_steps") else "",
             f"cfg {extra['cfg_scale']:g}" if extra.get("cfg_scale") is not None else "",
             f"adherence {extra['adherence']:.3f}" if extra.get("adherence") is not None else "",
             f"aesthetic {extra['aesthetic']:.2f}" if extra.get("aesthetic") is not None else ""]
    return " · ".join(part for part in parts if part)


