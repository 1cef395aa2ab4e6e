"""Our query (README: API) run against a Searcher: its text split into positive and negative phrases, its mode
chosen, its parts encoded and weighted, then ranked, filtered, sorted and grouped. One path for /api/search,
/api/export and export_results.py, so an export holds exactly what the same query shows."""

import time
from dataclasses import dataclass

import numpy as np

from prompt_search.index.keywords import KeywordQuery, parse_query
from prompt_search.search.api_input import SearchRequest, decode_base64, filter_ranges, search_mode
from prompt_search.search.core import combine
from prompt_search.search.hybrid import SORT_DEPTH, Wanted
from prompt_search.search.service import Answer, BadInput, Searcher, split_negatives


@dataclass(frozen=True)
class QueryLimits:
    """What one query may ask for (config.py: DEDUPE_THRESHOLD, MAX_NEGATIVES, MAX_UPLOAD_MB)."""
    dedupe_threshold: float
    max_negatives: int
    max_image_bytes: int


@dataclass
class Ran:
    """A query's answer, with how it was ranked: its mode, its words (to mark in the prompts) and its negatives."""
    mode: str
    keywords: KeywordQuery
    negatives: list[str]
    answer: Answer


def run_query(searcher: Searcher, query: SearchRequest, limits: QueryLimits) -> Ran:
    """The query's results; BadInput (one line, an HTTP status) for a query that cannot be answered as asked."""
    if (query.sort != "relevance" or query.group != "none") and query.offset + query.num_results > SORT_DEPTH:
        raise BadInput(f"a sorted or grouped query orders the first {SORT_DEPTH} results by relevance: offset + "
                       f"num_results must be at most {SORT_DEPTH}", 422)
    positive, negatives = split_negatives(query.text)
    negatives += [text for text in query.negative if text.strip()]
    if len(negatives) > limits.max_negatives:  # each is one encoder run
        raise BadInput(f"at most {limits.max_negatives} negative phrases, got {len(negatives)}", 422)
    if not (positive or query.image or query.like):
        raise BadInput("give a text, an image or a result to search like")
    answer = Answer([], [])
    keywords = parse_query(positive, negatives)
    mode = search_mode(query, keywords, searcher.side(query.index).keywords, answer.notes)
    start = time.perf_counter()
    vector = None if mode == "keyword" else combine(_vector_parts(searcher, limits, query, positive, negatives,
                                                                  answer.notes))
    answer.timings["encode"] = (time.perf_counter() - start) * 1e3
    wanted = Wanted(query.num_results, query.offset, limits.dedupe_threshold if query.dedupe else 1.0, mode, keywords)
    searcher.search(query.index, vector, wanted, filter_ranges(query.filters), answer, query.sort, query.group)
    return Ran(mode, keywords, negatives, answer)


def _vector_parts(searcher: Searcher, limits: QueryLimits, query: SearchRequest, positive: str,
                  negatives: list[str], notes: list[str]) -> list[tuple[np.ndarray, float]]:
    """The query's weighted unit vectors: its text, its negative texts (subtracted), its image, its liked result."""
    parts = [(searcher.encode_text(positive, notes), query.text_weight)] if positive else []
    parts += [(searcher.encode_text(text, notes), -query.negative_weight) for text in negatives]
    if query.image:
        parts.append((searcher.encode_image(decode_base64(query.image, limits.max_image_bytes)), query.image_weight))
    if query.like:
        parts.append((searcher.stored_vector(query.like.index, query.like.position), 1.0))
    return parts
