"""A query's ranking in one of three modes: `semantic` (CLIP: core.find_hits), `keyword` (the words of its prompt:
BM25 over the set's keyword index) or `hybrid` (both, merged by reciprocal rank fusion: fusion.py).

Every mode then folds near-identical results and pages as a semantic query always has, and answers Hits that say
which ranking found each (Hit.found_by). Filters narrow each ranking before fusion, as they narrow a semantic search
before its top k: a narrow filter still fills its page. The rows of exactly the words of the query (a pasted prompt)
come first in the keyword and hybrid modes, in the order the ranking gave them.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from prompt_search.errors import UserError
from prompt_search.index.keywords import KeywordQuery
from prompt_search.search.core import MAX_CANDIDATES, Hit, SearchIndex, collapse, find_hits
from prompt_search.search.fusion import fuse

MODES = ("hybrid", "semantic", "keyword")
FUSION_DEPTH = 1000  # results of each ranking fused: the deepest page a request may ask for (answers.MAX_RESULT_DEPTH)


@dataclass(frozen=True)
class Wanted:
    """What a query asks of a side: results offset to offset + k, how alike two may be before they fold into one
    (1: never), the mode, and the query's keywords (used by the keyword and hybrid modes)."""
    k: int
    offset: int = 0
    dedupe_threshold: float = 1.0
    mode: str = "semantic"
    keywords: KeywordQuery = KeywordQuery()


def ranked(searched: SearchIndex, vector: np.ndarray | None, wanted: Wanted,
           keep: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Hit]:
    """Hits offset to offset + k of the query in searched (positions, scores and found_by; describe reads the rest).
    keep: only positions it marks True. vector may be None in the keyword mode only. A side whose rows have no
    prompt (images of one's own without metadata) has no words to fuse: its hybrid ranking is the semantic one."""
    if wanted.mode == "semantic" or wanted.mode == "hybrid" and searched.keywords and not searched.keywords.documents:
        hits = find_hits(searched, vector, wanted.offset + wanted.k, wanted.dedupe_threshold, keep)
        for hit in hits:
            hit.found_by = {"clip": hit.score}
        return hits[wanted.offset:]
    if searched.keywords is None:
        raise UserError(f"{searched.folder} has no keyword index (step 4 built it before it made one): rebuild it "
                        "with step 4 to search by words, or search in the semantic mode (--SEARCH_MODE=semantic)")
    if wanted.mode == "keyword":
        positions, scores = _keyword_ranking(searched, wanted, keep, wanted.offset + wanted.k)
        found_by = [{"keywords": float(score)} for score in scores]
    else:
        clip = find_hits(searched, vector, FUSION_DEPTH, 1.0, keep)
        clip_positions = [hit.position for hit in clip]
        words_positions, words_scores = _keyword_ranking(searched, wanted, keep, FUSION_DEPTH)
        fused = fuse([clip_positions, words_positions.tolist()])
        positions = np.asarray([position for position, _ in fused], np.int64)
        scores = np.asarray([score for _, score in fused], np.float32)
        clip_scores = {hit.position: hit.score for hit in clip}
        words_found = dict(zip(words_positions.tolist(), words_scores.tolist(), strict=True))
        found_by = [{name: float(of[int(position)]) for name, of in (("clip", clip_scores), ("keywords", words_found))
                     if int(position) in of} for position in positions]
    positions, scores, found_by = _exact_first(searched, wanted.keywords, positions, scores, found_by)
    hits = collapse(searched, scores, positions, wanted.offset + wanted.k, wanted.dedupe_threshold)
    by_position = dict(zip(positions.tolist(), found_by, strict=True))
    for hit in hits:
        hit.found_by = by_position[hit.position]
    return hits[wanted.offset:]


def _keyword_ranking(searched: SearchIndex, wanted: Wanted, keep: Callable[[np.ndarray], np.ndarray] | None,
                     depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The top positions by BM25 and their scores: depth of them that keep marks (more when folding may merge some),
    searching deeper while a filter drops rows, up to MAX_CANDIDATES."""
    wanted_rows = depth if wanted.dedupe_threshold >= 1 or wanted.mode == "hybrid" else 4 * depth
    limit = wanted_rows
    while True:
        positions, scores = searched.keywords.search(wanted.keywords, limit)
        searched_all = len(positions) < limit  # every matching row is here
        if keep is not None and len(positions):
            kept = keep(positions)
            positions, scores = positions[kept], scores[kept]
        if len(positions) >= wanted_rows or searched_all or limit >= MAX_CANDIDATES:
            return positions[:wanted_rows], scores[:wanted_rows]
        limit = min(4 * limit, MAX_CANDIDATES)


def _exact_first(searched: SearchIndex, keywords: KeywordQuery, positions: np.ndarray, scores: np.ndarray,
                 found_by: list[dict]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """The ranking with the rows whose prompt has exactly the query's words (when it is only words) moved first."""
    whole = keywords.whole()
    if whole is None or not len(positions):
        return positions, scores, found_by
    exact = np.isin(positions, searched.keywords.exact(whole))
    order = np.argsort(~exact, kind="stable")
    return positions[order], scores[order], [found_by[i] for i in order]
