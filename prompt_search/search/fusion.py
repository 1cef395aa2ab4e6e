"""Hybrid ranking: the CLIP ranking and the keyword ranking of one query merged by reciprocal rank fusion (RRF,
Cormack, Clarke and Buettcher, SIGIR 2009): a result's fused score is the sum over the rankings that hold it of
1 / (RRF_CONSTANT + its rank there), ranks counted from 1.

Why ranks and not scores: a cosine similarity and a BM25 score are on scales that have nothing to do with each
other (BM25 grows with the query's length and the rarity of its words), so no weight between them holds from one
query to the next; ranks are comparable as they are. Why 60: the paper's constant, the default of the hybrid modes of
Elasticsearch, OpenSearch, Vespa and Weaviate; it damps the head of each list, so that a result near the top of
both lists beats one at the very top of one only.
"""

from collections.abc import Sequence

RRF_CONSTANT = 60


def fuse(rankings: Sequence[Sequence[int]], constant: int = RRF_CONSTANT) -> list[tuple[int, float]]:
    """(position, fused score) of every position the rankings hold, best first. Rankings list positions best first,
    each position at most once. Equal scores keep the order in which the positions first appear, the rankings
    read in turn (the first ranking's first, then the second's first, ...)."""
    scores: dict[int, float] = {}
    first_seen: dict[int, tuple[int, int]] = {}
    for which, ranking in enumerate(rankings):
        for rank, position in enumerate(ranking, 1):
            scores[position] = scores.get(position, 0.0) + 1.0 / (constant + rank)
            first_seen.setdefault(position, (rank, which))
    return sorted(scores.items(), key=lambda item: (-item[1], first_seen[item[0]]))
