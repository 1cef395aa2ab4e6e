"""A query's ranking in one of three modes: `semantic` (CLIP: core.find_hits), `keyword` (the words of its prompt:
BM25 over the set's keyword index) or `hybrid` (both, merged by reciprocal rank fusion: fusion.py).

Every mode then folds near-identical results and pages as a semantic query always has, and answers Hits that say
which ranking found each (Hit.found_by). Filters narrow each ranking before fusion, as they narrow a semantic search
before its top k: a narrow filter still fills its page. The rows of exactly the words of the query (a pasted prompt)
come first in the keyword mode (in position order, as they have the same words) and in the hybrid mode (in fused
order).
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from prompt_search.errors import UserError
from prompt_search.index.keywords import KeywordQuery
from prompt_search.search.core import MAX_CANDIDATES, Hit, SearchIndex, clip_ranking, collapse, find_hits
from prompt_search.search.fusion import fuse

MODES = ("hybrid", "semantic", "keyword")
FUSION_DEPTH = 1000  # results of each ranking fused: the deepest page a request may ask for (answers.MAX_RESULT_DEPTH)
# Results by relevance a sort or grouping orders, whatever the page, so that pages of one sorted list follow each other:
# the candidates a lossy index re-ranks anyway (choice.RERANK_CANDIDATES). 1,000 made a sorted query at 1M vectors
# cost 2x a plain one (benchmarks/bench_serve.py).
SORT_DEPTH = 400


@dataclass(frozen=True)
class Wanted:
    """What a query asks of a side: results offset to offset + k, how alike two may be before they fold into one
    (1: never), the mode, and the query's keywords (used by the keyword and hybrid modes)."""
    k: int
    offset: int = 0
    dedupe_threshold: float = 1.0
    mode: str = "semantic"
    keywords: KeywordQuery = KeywordQuery()
    sort_by: Callable[[np.ndarray], np.ndarray] | None = None  # positions -> values, highest first (NaN last)
    group_by: Callable[[np.ndarray], np.ndarray] | None = None  # positions -> group keys: one result per group


def ranked(searched: SearchIndex, vector: np.ndarray | None, wanted: Wanted,
           keep: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Hit]:
    """Hits offset to offset + k of the query in searched (positions, scores and found_by; describe reads the rest).
    keep: only positions it marks True. With sort_by or group_by, the first SORT_DEPTH results by relevance are
    ordered by sort_by's values (ties keep their relevance order, rows without a value last), then only the first
    of each group_by key is kept, then near-identical ones fold in that order and pages apply: within the
    candidates, as filters apply, never by scanning the table."""
    if wanted.sort_by is None and wanted.group_by is None:
        return _by_relevance(searched, vector, wanted, keep)
    # the candidates unfolded (folding a thousand costs a thousand comparisons each); folded once in their new order
    hits = _by_relevance(searched, vector, replace(wanted, k=SORT_DEPTH, offset=0, dedupe_threshold=1.0), keep)
    positions = np.asarray([hit.position for hit in hits], np.int64)
    if wanted.sort_by is not None:
        values = wanted.sort_by(positions)
        order = np.lexsort((np.arange(len(values)), -np.nan_to_num(values, nan=-np.inf)))
        hits, positions = [hits[i] for i in order], positions[order]
    if wanted.group_by is not None:
        hits = _first_of_each_group(hits, wanted.group_by(positions))
    by_position = {hit.position: hit for hit in hits}
    folded = collapse(searched, np.asarray([hit.score for hit in hits], np.float32),
                      np.asarray([hit.position for hit in hits], np.int64), wanted.offset + wanted.k,
                      wanted.dedupe_threshold)[wanted.offset:]
    for hit in folded:
        hit.found_by, hit.grouped = by_position[hit.position].found_by, by_position[hit.position].grouped
    return folded


def _first_of_each_group(hits: list[Hit], keys: np.ndarray) -> list[Hit]:
    """The first hit of each group key, in order, each counting the others of its group (Hit.grouped)."""
    first: dict = {}
    for hit, key in zip(hits, keys, strict=True):
        if key in first:
            first[key].grouped += 1
        else:
            first[key] = hit
    return list(first.values())


def _by_relevance(searched: SearchIndex, vector: np.ndarray | None, wanted: Wanted,
                  keep: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Hit]:
    """Hits offset to offset + k by the mode's relevance. vector may be None in the keyword mode only. A side whose
    rows have no prompt (images of one's own without metadata) has no words to fuse: its hybrid ranking is the
    semantic one."""
    if wanted.mode == "semantic" or wanted.mode == "hybrid" and searched.keywords and not searched.keywords.documents:
        hits = find_hits(searched, vector, wanted.offset + wanted.k, wanted.dedupe_threshold, keep)
        for hit in hits:
            hit.found_by = {"clip": hit.score}
        return hits[wanted.offset:]
    if searched.keywords is None:
        raise UserError(f"{searched.folder} has no keyword index (step 4 built it before it made one): rebuild it "
                        "with step 4 to search by words, or search in the semantic mode (--SEARCH_MODE=semantic)")
    depth = wanted.offset + wanted.k if wanted.mode == "keyword" else FUSION_DEPTH
    by_words, words_scores, exact = _keyword_ranking(searched, wanted, keep, depth)
    rankings = {"keywords": (by_words, words_scores)}
    rows = None
    if wanted.mode == "keyword":
        positions, scores = by_words, words_scores
    else:
        clip_scores, clip_positions, clip_rows = clip_ranking(searched, vector, FUSION_DEPTH, keep)
        rankings["clip"] = (clip_positions, clip_scores)
        positions, scores = fuse([clip_positions, by_words])
        first = np.argsort(~np.isin(positions, by_words[:exact]), kind="stable")  # a pasted prompt's rows first
        positions, scores = positions[first], scores[first]
        rows = _known_rows(searched, positions, clip_positions, clip_rows) if wanted.dedupe_threshold < 1 else None
    hits = collapse(searched, scores, positions, wanted.offset + wanted.k, wanted.dedupe_threshold, rows)
    hits = hits[wanted.offset:]
    for name in ("clip", "keywords"):  # which ranking found each hit, and its score there
        if name in rankings:
            found, found_scores = rankings[name]
            score_of = dict(zip(found.tolist(), found_scores.tolist(), strict=True))
            for hit in hits:
                if hit.position in score_of:
                    hit.found_by[name] = score_of[hit.position]
    return hits


def _known_rows(searched: SearchIndex, positions: np.ndarray, clip_positions: np.ndarray,
                clip_rows: np.ndarray | None) -> np.ndarray:
    """The stored vectors of positions (float32) for folding: those the CLIP ranking's re-ranking read already
    taken from it, the others read."""
    rows = np.empty((len(positions), searched.vectors.shape[1]), np.float32)
    known = np.zeros(len(positions), bool)
    if clip_rows is not None and len(clip_positions):
        order = np.argsort(clip_positions)
        at = np.searchsorted(clip_positions, positions, sorter=order).clip(0, len(clip_positions) - 1)
        known = clip_positions[order[at]] == positions
        rows[known] = clip_rows[order[at[known]]]
    if (~known).any():
        rows[~known] = np.asarray(searched.vectors[positions[~known]], np.float32)
    return rows


def _keyword_ranking(searched: SearchIndex, wanted: Wanted, keep: Callable[[np.ndarray], np.ndarray] | None,
                     depth: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The top positions by BM25 and their scores: depth of them that keep marks (more when folding may merge some),
    searching deeper while a filter drops rows, up to MAX_CANDIDATES; the rows of exactly the query's words first
    (_exact_first), and how many those are."""
    wanted_rows = depth if wanted.dedupe_threshold >= 1 or wanted.mode == "hybrid" else 4 * depth
    limit = wanted_rows
    while True:
        positions, scores = searched.keywords.search(wanted.keywords, limit)
        searched_all = len(positions) < limit  # every matching row is here
        if keep is not None and len(positions):
            kept = keep(positions)
            positions, scores = positions[kept], scores[kept]
        if len(positions) >= wanted_rows or searched_all or limit >= MAX_CANDIDATES:
            return _exact_first(searched, wanted.keywords, positions[:wanted_rows], scores[:wanted_rows], keep)
        limit = min(4 * limit, MAX_CANDIDATES)


def _exact_first(searched: SearchIndex, keywords: KeywordQuery, positions: np.ndarray, scores: np.ndarray,
                 keep: Callable[[np.ndarray], np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, int]:
    """The ranking with the rows whose prompt has exactly the query's words (when it is only words: a pasted prompt)
    first, in position order, each with the best score of one of them: prompts that repeat the query's words may
    outscore them in BM25, and could push some of them out of the ranking."""
    whole = keywords.whole()
    exact = searched.keywords.exact(whole) if whole and len(positions) else np.zeros(0, np.int64)
    if keep is not None and len(exact):
        exact = exact[keep(exact)]
    if not len(exact):
        return positions, scores, 0
    exact = exact[:len(positions)]
    held = np.isin(positions, exact)
    best = float(scores[held].max()) if held.any() else float(searched.keywords.scan(keywords, [whole])[0])
    rest = ~np.isin(positions, exact)
    return (np.concatenate([exact, positions[rest]])[:len(positions)],
            np.concatenate([np.full(len(exact), best, np.float32), scores[rest]])[:len(positions)], len(exact))
