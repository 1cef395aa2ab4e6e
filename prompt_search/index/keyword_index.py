"""The keyword index of an index set (tantivy): every row's prompt as keywords.py reads it, ranked by BM25.

Step 4 builds it from the set's own item table into the set's keywords/ folder, so that it is published, replaced
and removed with the set (output_sets.py), and it always describes the same rows. Each document is one row:
  position  the row's position in the set (a fast field: hits become positions without reading stored documents)
  words     the prompt's words, folded, joined by spaces (tantivy's whitespace tokenizer, positions kept for phrases)
  key       keywords.prompt_key of the words: the rows of exactly a pasted prompt, found by one term
A row without a prompt has no document. Opening it memory-maps its files: the cost does not grow with its size
(benchmarks/bench_keyword.py).

Why tantivy: at 10M prompts its p50 query was 6.7 ms, with exact phrases, and it opened in under 1 ms; SQLite FTS5's
p99 was 2.3 s at 1M and bm25s has no phrases (benchmarks/RESULTS.md, issue 30).
"""

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import tantivy

from prompt_search.index.keywords import KeywordQuery, prompt_key, words
from prompt_search.items import ItemTable
from prompt_search.layout import KEYWORDS_FOLDER

WRITER_HEAP_BYTES = 256_000_000  # tantivy's indexing memory (split between its threads): fewer, larger segments
PARALLEL_ROWS = 100_000  # from this many rows, prompts are read into words by one child process per core
EXACT_ROWS = 100_000  # rows of one exact prompt looked at (one prompt's images, a safety filter's black pictures...)
PHRASE_BOOST = 4.0  # a prompt holding the query's words in order ranks above those holding them apart


def _schema() -> tantivy.Schema:
    schema = tantivy.SchemaBuilder()
    schema.add_integer_field("position", stored=False, indexed=False, fast=True)
    schema.add_text_field("words", stored=False, tokenizer_name="whitespace", index_option="position")
    schema.add_integer_field("key", stored=False, indexed=True, fast=False)
    return schema.build()


def _analysed(prompts: list[str | None]) -> list[tuple[str, int] | None]:
    """Each prompt's words joined by spaces and its key; None for a row with no words. A prompt repeated in the
    batch (one per image of it) is read once."""
    seen: dict[str, tuple[str, int] | None] = {}
    for prompt in prompts:
        if prompt is not None and prompt not in seen:
            found = words(prompt)
            seen[prompt] = (" ".join(found), prompt_key(found)) if found else None
    return [None if prompt is None else seen[prompt] for prompt in prompts]


def _prompt_batches(items: ItemTable) -> Iterator[list[str | None]]:
    for number in range(items.reader.num_record_batches):
        yield items.reader.get_batch(number).column("prompt").to_pylist()


def _bounded_map(pool: ProcessPoolExecutor, batches: Iterator[list]) -> Iterator[list]:
    """pool.map of _analysed over batches, in order, with at most two batches per process in flight: the prompts of
    10M rows are never all in memory at once (Executor.map submits every batch first)."""
    pending: deque = deque()
    for batch in batches:
        pending.append(pool.submit(_analysed, batch))
        if len(pending) >= 2 * (os.cpu_count() or 1):
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def build_keywords(items_path: str, set_folder: str) -> int:
    """Write the keyword index of the item table at items_path into set_folder/keywords; return its documents.

    An item table without a prompt column (images of one's own without metadata) gets an empty index.
    """
    items = ItemTable(items_path)
    folder = os.path.join(set_folder, KEYWORDS_FOLDER)
    os.makedirs(folder)
    index = tantivy.Index(_schema(), path=folder)
    writer = index.writer(heap_size=WRITER_HEAP_BYTES)
    documents = 0
    if "prompt" in items.reader.schema.names:
        batches = _prompt_batches(items)
        pool = None
        if len(items) >= PARALLEL_ROWS and (os.cpu_count() or 1) > 1:
            # spawned, not forked: step 4's own threads (faiss's) must not be copied into a child mid-work
            pool = ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("spawn"))
        try:
            analysed = _bounded_map(pool, batches) if pool else map(_analysed, batches)
            position = 0
            for batch in analysed:
                for entry in batch:
                    if entry is not None:
                        writer.add_document(tantivy.Document(position=position, words=entry[0], key=entry[1]))
                        documents += 1
                    position += 1
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
    writer.commit()
    writer.wait_merging_threads()
    return documents


class KeywordIndex:
    """An index set's keyword index, opened for queries (memory-mapped, read-only)."""

    def __init__(self, folder: str):
        self.index = tantivy.Index.open(folder)
        self.schema = self.index.schema
        self.searcher = self.index.searcher()
        self.documents = self.searcher.num_docs

    @classmethod
    def open(cls, set_folder: str) -> "KeywordIndex | None":
        """The keyword index of the set in set_folder; None for a set step 4 built before it made one."""
        folder = os.path.join(set_folder, KEYWORDS_FOLDER)
        return cls(folder) if os.path.isdir(folder) else None

    def search(self, query: KeywordQuery, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The positions of the top `limit` rows for query, best first, and their BM25 scores."""
        if not query or limit <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        return self._top(self._query(query), limit)

    def count(self, query: KeywordQuery) -> int:
        """How many rows match query."""
        return self.searcher.search(self._query(query), limit=1, count=True).count if query else 0

    def exact(self, prompt_words: tuple[str, ...]) -> np.ndarray:
        """Positions of the rows whose prompt has exactly these words, sorted (at most EXACT_ROWS of them)."""
        query = tantivy.Query.term_query(self.schema, "key", prompt_key(prompt_words))
        count = self.searcher.search(query, limit=1, count=True).count
        found = self.searcher.search(query, limit=min(count, EXACT_ROWS), count=False).hits if count else []
        return np.sort(np.asarray(self._positions(found), np.int64))

    def _top(self, query: tantivy.Query, limit: int) -> tuple[np.ndarray, np.ndarray]:
        hits = self.searcher.search(query, limit=limit, count=False).hits
        return (np.asarray(self._positions(hits), np.int64).reshape(-1),
                np.asarray([score for score, _ in hits], np.float32))

    def _positions(self, hits: list) -> list[int]:
        return self.searcher.fast_field_values("position", [address for _, address in hits]) if hits else []

    def _query(self, query: KeywordQuery) -> tantivy.Query:
        """Any of the words (BM25), the words in order boosted; every quoted phrase required; no excluded phrase."""
        clauses = [(tantivy.Occur.Should, self._phrase((word,))) for word in dict.fromkeys(query.words)]
        if len(query.words) > 1:
            clauses.append((tantivy.Occur.Should, tantivy.Query.boost_query(self._phrase(query.words), PHRASE_BOOST)))
        clauses += [(tantivy.Occur.Must, self._phrase(phrase)) for phrase in query.phrases]
        clauses += [(tantivy.Occur.MustNot, self._phrase(phrase)) for phrase in query.excluded]
        return tantivy.Query.boolean_query(clauses)

    def _phrase(self, phrase: tuple[str, ...]) -> tantivy.Query:
        if len(phrase) == 1:
            return tantivy.Query.term_query(self.schema, "words", phrase[0])
        return tantivy.Query.phrase_query(self.schema, "words", list(phrase))

