"""Reciprocal rank fusion, against a reference written from the paper's formula."""

import numpy as np

from prompt_search.search.fusion import RRF_CONSTANT, fuse


def reference(rankings: list[list[int]], constant: int) -> dict[int, float]:
    """RRF as Cormack et al. define it: sum over rankings of 1 / (k + rank), ranks from 1."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for index in range(len(ranking)):
            scores[ranking[index]] = scores.get(ranking[index], 0) + 1 / (constant + index + 1)
    return scores


def test_fused_order_and_scores_equal_the_reference():
    rng = np.random.default_rng(0)
    for _ in range(200):
        universe = rng.permutation(300)
        semantic = [int(p) for p in rng.permutation(universe)[:rng.integers(0, 80)]]
        keyword = [int(p) for p in rng.permutation(universe)[:rng.integers(0, 80)]]
        fused = list(zip(*fuse([semantic, keyword]), strict=True))
        expected = reference([semantic, keyword], RRF_CONSTANT)
        assert {p for p, _ in fused} == expected.keys()
        assert all(abs(score - expected[p]) < 1e-12 for p, score in fused)
        assert all(a[1] >= b[1] for a, b in zip(fused, fused[1:], strict=False))


def test_a_result_high_in_both_lists_beats_the_top_of_one():
    assert fuse([[1, 2, 3], [2, 4, 5]])[0][:2].tolist() == [2, 1]
    assert fuse([[7], []])[0].tolist() == [7] and fuse([[], []])[0].tolist() == []


def test_ties_keep_the_order_the_positions_first_appear():
    # 1 and 2 are first in one list each: equal scores, the semantic list's first comes first
    assert fuse([[1], [2]])[0].tolist() == [1, 2]
    assert fuse([[5, 6], [6, 5]])[0].tolist() == [5, 6]
