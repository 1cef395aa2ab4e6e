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

import functools
import math
import multiprocessing
import os
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import tantivy

from prompt_search.index.keywords import KeywordQuery, prompt_key, words
from prompt_search.items import ItemTable
from prompt_search.layout import KEYWORDS_FOLDER

WRITER_HEAP_BYTES = 256_000_000  # tantivy's indexing memory (split between its threads): fewer, larger segments
PARALLEL_ROWS = 100_000  # from this many rows, prompts are read into words by one child process per core
EXACT_ROWS = 100_000  # rows of one exact prompt looked at (one prompt's images, a safety filter's black pictures...)
# A word more than this share of the rows hold ("a", "of", "masterpiece") is left out of a query's any-of words when
# it has rarer ones, as Lucene's common-terms query does: its BM25 weight is small, and matching it costs a pass over
# most rows (a pasted 20-word prompt took 38 ms at 1M prompts with them, 5 ms without: RESULTS.md, issue 30). It
# still counts in phrases and in the words-in-order boost.
COMMON_SHARE = 0.05
# ...in an index of at least this many rows: below, every word is cheap to match, and matches then never depend on
# the collection's statistics (a live index's delta and a rebuilt set find the same rows)
COMMON_MIN_DOCUMENTS = 100_000
PHRASE_BOOST = 4.0  # a prompt holding the query's words in order ranks above those holding them apart
BM25_K1, BM25_B = 1.2, 0.75  # tantivy's BM25 constants, for scoring rows outside the index as it does (scan)


def _occurrences(row: tuple[str, ...], phrase: tuple[str, ...]) -> int:
    size = len(phrase)
    return sum(1 for start in range(len(row) - size + 1) if row[start:start + size] == phrase)


def _lockable(folder: str) -> tempfile.TemporaryDirectory | None:
    """A folder of links to folder's files, when this process cannot write in folder (a set on a read-only mount),
    for tantivy to take the lock file it takes to open an index (.tantivy-meta.lock); None when it can write there."""
    if os.access(folder, os.W_OK):
        return None
    view = tempfile.TemporaryDirectory(prefix="prompt-search-keywords-")
    for name in os.listdir(folder):
        if not name.endswith(".lock"):  # its own lock files, opened for writing, are made in the view
            os.symlink(os.path.join(folder, name), os.path.join(view.name, name))
    return view


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


def build_keywords(items_path: str, set_folder: str) -> dict:
    """Write the keyword index of the item table at items_path into set_folder/keywords; return its documents and
    their words in all (source.json keeps them: a live delta's rows are scored with them, KeywordIndex.scan).

    An item table without a prompt column (images of one's own without metadata) gets an empty index.
    """
    items = ItemTable(items_path)
    folder = os.path.join(set_folder, KEYWORDS_FOLDER)
    os.makedirs(folder)
    index = tantivy.Index(_schema(), path=folder)
    writer = index.writer(heap_size=WRITER_HEAP_BYTES)
    documents = total_words = 0
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
                        total_words += entry[0].count(" ") + 1
                    position += 1
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
    writer.commit()
    writer.wait_merging_threads()
    return {"documents": documents, "words": total_words}


class KeywordIndex:
    """An index set's keyword index, opened for queries (memory-mapped, read-only)."""

    def __init__(self, folder: str, total_words: int):
        self.view = _lockable(folder)  # kept while the index is open: a temporary folder, when there is one
        self.index = tantivy.Index.open(self.view.name if self.view else folder)
        self.schema = self.index.schema
        self.searcher = self.index.searcher()
        self.documents = self.searcher.num_docs
        self.average_words = total_words / max(self.documents, 1)
        self.document_frequency = functools.lru_cache(maxsize=65_536)(self._document_frequency)

    @classmethod
    def open(cls, set_folder: str, built: dict | None) -> "KeywordIndex | None":
        """The keyword index of the set in set_folder, as build_keywords described it (built); None for a set step
        4 built before it made one."""
        folder = os.path.join(set_folder, KEYWORDS_FOLDER)
        return cls(folder, built["words"]) if built and os.path.isdir(folder) else None

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

    def scan(self, query: KeywordQuery, rows: Sequence[tuple[str, ...]]) -> np.ndarray:
        """The BM25 score of each row (its words) that query matches, -inf for the others: rows not in this index (a
        live delta's), scored as tantivy scores this index's own, with its statistics (row count, average length,
        each word's rows), so that they rank among its rows as they would in a rebuilt index (up to tantivy's
        rounding of lengths)."""
        clauses = self._clauses(query)
        idf = {phrase: sum(self._idf(word) for word in phrase) for _, phrase, _ in clauses}
        must = any(occur == tantivy.Occur.Must for occur, _, _ in clauses)
        scores = np.full(len(rows), -np.inf, np.float32)
        for number, row in enumerate(rows):
            length_norm = BM25_K1 * (1 - BM25_B + BM25_B * len(row) / self.average_words)
            total, matched = 0.0, must
            for occur, phrase, boost in clauses:
                count = _occurrences(row, phrase)
                if occur == tantivy.Occur.MustNot and count or occur == tantivy.Occur.Must and not count:
                    break
                if count and occur != tantivy.Occur.MustNot:
                    total += boost * idf[phrase] * count * (BM25_K1 + 1) / (count + length_norm)
                    matched = True
            else:
                if matched and row:
                    scores[number] = total
        return scores

    def _idf(self, word: str) -> float:
        frequency = self.document_frequency(word)
        return math.log(1 + (self.documents - frequency + 0.5) / (frequency + 0.5))

    def _document_frequency(self, word: str) -> int:
        return self.searcher.doc_freq("words", word)

    def _clauses(self, query: KeywordQuery) -> list[tuple[tantivy.Occur, tuple[str, ...], float]]:
        """The query as clauses of (occur, phrase, boost): any of its words (BM25), leaving out those most rows hold
        when it has rarer ones (COMMON_SHARE, in a large index); its words in order, boosted; every quoted phrase;
        no excluded one."""
        unique = list(dict.fromkeys(query.words))
        large = self.documents >= COMMON_MIN_DOCUMENTS
        rare = [word for word in unique if large and self.document_frequency(word) <= COMMON_SHARE * self.documents]
        clauses = [(tantivy.Occur.Should, (word,), 1.0) for word in rare or unique]
        if len(query.words) > 1:
            clauses.append((tantivy.Occur.Should, query.words, PHRASE_BOOST))
        clauses += [(tantivy.Occur.Must, phrase, 1.0) for phrase in query.phrases]
        return clauses + [(tantivy.Occur.MustNot, phrase, 1.0) for phrase in query.excluded]

    def _query(self, query: KeywordQuery) -> tantivy.Query:
        def clause(phrase: tuple[str, ...], boost: float) -> tantivy.Query:
            found = self._phrase(phrase)
            return found if boost == 1 else tantivy.Query.boost_query(found, boost)

        clauses = self._clauses(query)
        return tantivy.Query.boolean_query([(occur, clause(phrase, boost)) for occur, phrase, boost in clauses])

    def _phrase(self, phrase: tuple[str, ...]) -> tantivy.Query:
        if len(phrase) == 1:
            return tantivy.Query.term_query(self.schema, "words", phrase[0])
        return tantivy.Query.phrase_query(self.schema, "words", list(phrase))

