"""serve.py --WATCH's live index as queries see it: a published index set, some of its rows hidden (their files
were deleted or changed since), and a delta of the rows added since, searched exactly in memory.

The merged side answers as an index set step 4 would build over the same rows: one index (MergedIndex), one item
table (MergedItems), one vectors array (MergedVectors), one keyword index (MergedKeywords), positions 0..n-1 the
published set's and n.. the delta's.
find_hits then folds, filters and pages over it unchanged, so dedupe, filters and paging are those of a batch
build. A delta row once added keeps its position until the delta is folded into new published sets
(live/compaction.py): a hidden one is masked, never removed.
"""

import functools
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from prompt_search.index.keyword_index import KeywordIndex
from prompt_search.index.keywords import KeywordQuery, words
from prompt_search.search.core import SearchIndex
from prompt_search.search.filters import FILTER_COLUMNS, FilterColumn
from prompt_search.search.service import OpenSide


@dataclass(frozen=True)
class Delta:
    """The rows added since the published set, and which rows of both are hidden. Replaced whole on each change."""
    vectors: np.ndarray  # float32 (n, d), unit rows, as step 3 writes them
    rows: tuple[dict, ...]  # item table rows: id, path, prompt and the other columns step 1 reads
    hidden: np.ndarray  # bool, one per position of the published set and then of the delta

    @classmethod
    def empty(cls, published: int, dimension: int) -> "Delta":
        return cls(np.zeros((0, dimension), np.float32), (), np.zeros(published, bool))


class MergedIndex:
    """The published index and the delta as one index: top k by inner product, hidden positions left out."""

    def __init__(self, main, delta: Delta, lossy: bool = False):
        self.main, self.delta, self.lossy = main, delta, lossy
        self.d = main.d
        self.ntotal = main.ntotal + len(delta.rows)
        self.hidden_main = int(np.count_nonzero(delta.hidden[:main.ntotal]))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        main_n = self.main.ntotal
        scores, labels = np.zeros(0, np.float32), np.zeros(0, np.int64)
        searched_k = min(k + self.hidden_main, main_n)  # enough that k are left after the hidden ones
        if searched_k:
            found_scores, found = self.main.search(queries, searched_k)
            found_scores, found = found_scores[0], found[0]
            kept = found >= 0
            kept[kept] &= ~self.delta.hidden[found[kept]]
            scores, labels = found_scores[kept], found[kept].astype(np.int64)
        if len(self.delta.rows):  # every row scored in one pass (no copy of the rows), the hidden ones then dropped
            alive = np.flatnonzero(~self.delta.hidden[main_n:])
            added = (self.delta.vectors @ queries[0])[alive]
            if len(added) > k:  # its scores are exact: only its top k can be among the merged top k
                top = np.argpartition(-added, k - 1)[:k]
                added, alive = added[top], alive[top]
            scores = np.concatenate([scores, added])
            labels = np.concatenate([labels, alive + main_n])
        # an exact index's top k is a batch build's; a lossy one's approximate scores are not compared with the delta's
        # exact ones here: every candidate of both goes on to be re-ranked by its stored vector (core.find_hits)
        order = np.argsort(-scores, kind="stable")[:len(scores) if self.lossy else k]
        k = len(order) if self.lossy else k
        out_scores = np.full((1, k), -np.inf, np.float32)
        out_labels = np.full((1, k), -1, np.int64)
        out_scores[0, :len(order)], out_labels[0, :len(order)] = scores[order], labels[order]
        return out_scores, out_labels


class MergedKeywords:
    """The published keyword index, its hidden rows left out, and the delta's rows read word by word: a delta row
    matches as it would in the index, and is scored with the index's statistics (KeywordIndex.scan)."""

    def __init__(self, main: KeywordIndex, delta: Delta):
        self.main, self.hidden = main, delta.hidden
        self.published = len(delta.hidden) - len(delta.rows)
        self.hidden_main = int(np.count_nonzero(delta.hidden[:self.published]))
        self.added = [prompt_words(row.get("prompt")) for row in delta.rows]
        self.documents = main.documents + sum(1 for found in self.added if found)

    def search(self, query: KeywordQuery, limit: int) -> tuple[np.ndarray, np.ndarray]:
        positions, scores = self.main.search(query, limit + self.hidden_main)  # limit are left after the hidden
        shown = ~self.hidden[positions]
        positions, scores = positions[shown], scores[shown]
        if self.added:
            added = self.main.scan(query, self.added)
            found = np.flatnonzero(np.isfinite(added) & ~self.hidden[self.published:])
            positions = np.concatenate([positions, found + self.published])
            scores = np.concatenate([scores, added[found]])
        order = np.argsort(-scores, kind="stable")[:limit]
        return positions[order], scores[order]

    def exact(self, whole: tuple[str, ...]) -> np.ndarray:
        published = self.main.exact(whole)
        added = [self.published + i for i, found in enumerate(self.added) if found == whole]
        positions = np.concatenate([published, np.asarray(added, np.int64)])
        return positions[~self.hidden[positions]]


@functools.lru_cache(maxsize=65_536)  # the delta is read again at each change: each prompt's words once
def prompt_words(prompt: str | None) -> tuple[str, ...]:
    return tuple(words(prompt)) if prompt else ()


class MergedVectors:
    """The stored vectors (float16, as vectors.npy holds them) of the published set, then the delta's."""

    def __init__(self, main: np.ndarray, delta: Delta):
        self.main, self.delta = main, delta.vectors.astype(np.float16)
        self.shape = (len(main) + len(self.delta), main.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, positions):
        if np.ndim(positions) == 0:
            at = int(positions)
            return self.main[at] if at < len(self.main) else self.delta[at - len(self.main)]
        positions = np.asarray(positions, np.int64)
        out = np.empty((len(positions), self.shape[1]), np.float16)
        in_main = positions < len(self.main)
        if in_main.any():
            out[in_main] = self.main[positions[in_main]]
        out[~in_main] = self.delta[positions[~in_main] - len(self.main)]
        return out


class MergedItems:
    """The item table of the published set, then the delta's rows (with the same columns)."""

    def __init__(self, main, delta: Delta):
        self.main, self.reader = main, main.reader
        names = main.reader.schema.names
        self.delta_rows = [{name: row.get(name) for name in names} for row in delta.rows]

    def __len__(self) -> int:
        return len(self.main) + len(self.delta_rows)

    def rows(self, positions: list[int]) -> list[dict]:
        published = len(self.main)
        return [dict(self.delta_rows[at - published]) if at >= published else self.main.rows([at])[0]
                for at in positions]


class LiveIds:
    """Positions by id: the delta's own, else the published set's unless hidden."""

    def __init__(self, main: OpenSide, delta: Delta):
        self.main, self.hidden = main.ids, delta.hidden
        published = main.searched.index.ntotal
        self.added = {row["id"]: published + i for i, row in enumerate(delta.rows) if not delta.hidden[published + i]}

    def position(self, item_id: str) -> int | None:
        if item_id in self.added:
            return self.added[item_id]
        at = self.main.position(item_id)
        return None if at is None or self.hidden[at] else at


def merged_side(main: OpenSide, delta: Delta) -> OpenSide:
    """The side main with delta: what queries of a live index search."""
    searched: SearchIndex = main.searched
    merged = replace(searched, index=MergedIndex(searched.index, delta, searched.rerank),
                     items=MergedItems(searched.items, delta),
                     vectors=MergedVectors(searched.vectors, delta),
                     keywords=searched.keywords and MergedKeywords(searched.keywords, delta))
    schema = searched.items.reader.schema
    columns = {}
    for name, published in main.columns.items():
        added = FilterColumn.of(pa.chunked_array([pa.array([row.get(FILTER_COLUMNS[name]) for row in delta.rows],
                                                           schema.field(FILTER_COLUMNS[name]).type)]))
        columns[name] = FilterColumn(np.concatenate([published.values, added.values]),
                                     None if published.present is None and added.present is None else np.concatenate(
                                         [_present(published), _present(added)]))
    return OpenSide(merged, columns, LiveIds(main, delta))


def _present(column: FilterColumn) -> np.ndarray:
    return np.ones(len(column.values), bool) if column.present is None else column.present
