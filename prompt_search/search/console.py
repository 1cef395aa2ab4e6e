"""Step 5 at the console: its query image and two queries, the results printed, and the comparison with torch
CLIP's own answers (torch imported only for it: the query path needs none)."""

import os
from dataclasses import replace

import numpy as np
from PIL import Image

from prompt_search.errors import UserError
from prompt_search.index.keywords import parse_query
from prompt_search.pixels import UNREADABLE, open_rgb
from prompt_search.search.core import Hit, Query, SearchIndex, describe, details
from prompt_search.search.encoder import QueryEncoder
from prompt_search.search.filters import FILTER_COLUMNS, FilterColumn
from prompt_search.search.hybrid import Wanted, ranked
from prompt_search.sources.image_files import not_a_file


def read_image(path: str) -> Image.Image:
    """The query image in RGB; a UserError when it is missing, not a regular file (a FIFO would be waited on
    forever), or not an image that can be used (over the pixel limit, say)."""
    if not os.path.exists(path):
        raise UserError(f"query image {path} not found: set --INPUT_IMG_PATH to an image file")
    kind = not_a_file(path)
    if kind:
        raise UserError(f"query image {path} is not a regular file ({kind}): set --INPUT_IMG_PATH to an image file")
    try:
        return open_rgb(path)
    except UNREADABLE as error:
        raise UserError(f"query image {path} cannot be read: {error}") from None


def check_prompt(prompt: str) -> None:
    """A UserError for an empty text query, before the ONNX models are opened (or exported) for it."""
    if not prompt.strip():
        raise UserError("the text query is empty: set --INPUT_PROMPT to some text")


def encode_queries(encoder: QueryEncoder, prompt: str, image: Image.Image, image_path: str, mode: str) -> list[Query]:
    """The text query (ranked in mode: search/hybrid.py) and the image query (by CLIP), each with its L2-normalised
    ONNX CLIP embedding."""
    keywords = parse_query(prompt)
    if mode == "keyword" and not keywords:
        raise UserError(f"the text query {prompt!r} has no words for --SEARCH_MODE=keyword to search for")
    text, note = encoder.text(prompt)
    return [Query("text", prompt, text, note, mode=mode if keywords else "semantic", keywords=keywords),
            Query("image", image_path, encoder.image(encoder.pixels(image)))]


def search_queries(queries: list[Query], sides: dict[str, SearchIndex], k: int, dedupe_threshold: float,
                   sort: str = "relevance", group: str = "none") -> None:
    """Each query's top k in each side, in its mode, ordered by sort and one per prompt with group "prompt" (as
    the server's, README: Triage), described."""
    for side, searched in sides.items():
        ordering = _ordering(side, searched, sort, group)
        if searched.keywords is None and any(query.mode == "hybrid" for query in queries):
            print(f"(the {side} index has no keyword index: step 4 built it before it made one; searched by CLIP "
                  "only: rebuild it to search by words too)")
        for query in queries:
            plain = query.mode == "hybrid" and searched.keywords is None
            query.hits[side] = rank_query(searched, replace(query, mode="semantic") if plain else query,
                                          query.vector, k, dedupe_threshold, ordering)


def _ordering(side: str, searched: SearchIndex, sort: str, group: str) -> dict:
    """Wanted's sort_by and group_by for a side, from its item table's columns; a side without the column (the
    prompts have no adherence) is left in relevance order, and says so."""
    names = searched.items.reader.schema.names
    ordering = {}
    for asked, name, field, what in ((sort != "relevance", FILTER_COLUMNS.get(sort, ""), "sort_by", f"no {sort}"),
                                     (group == "prompt", "prompt_group", "group_by", "no prompt groups")):
        if not asked:
            continue
        if name not in names:
            print(f"(the {side} index has {what}: step 4 computes them for images; shown without)")
            continue
        column = FilterColumn.of(searched.items.column(name))
        ordering[field] = column.sort_values if field == "sort_by" else column.groups
    return ordering


def rank_query(searched: SearchIndex, query: Query, vector: np.ndarray, k: int, dedupe_threshold: float,
               ordering: dict | None = None) -> list[Hit]:
    """The query's top k in searched by vector (the ONNX one, or torch's to compare), in the query's mode, ordered
    as ordering says (_ordering)."""
    wanted = Wanted(k, 0, dedupe_threshold, query.mode, query.keywords, **(ordering or {}))
    return describe(searched, ranked(searched, vector, wanted))


def print_results(queries: list[Query]) -> None:
    for query in queries:
        for side, hits in query.hits.items():
            print(f"\nSIMILAR {side.upper()} TO THE {query.kind.upper()} {query.value!r} ({query.mode})")
            if query.note:
                print(f"  (the prompt is {query.note})")
            for hit in hits:
                where = hit.url or hit.path
                alike = f"  (and {hit.alike} near-identical)" if hit.alike else ""
                alike += f"  (and {hit.grouped} more of its prompt)" if hit.grouped else ""
                print(f"  {hit.rank:>2}  {hit.score:.4f}  {hit.id}  {hit.prompt[:80]!r}  {where}{alike}")
                if shown := details(hit):  # lines of their own: the result line keeps its layout for scripts
                    print(f"      {shown}")
                if query.mode == "hybrid":
                    print(f"      found by {' and '.join(hit.found_by)}")


def compare_with_torch(queries: list[Query], sides: dict[str, SearchIndex], model_name: str, model_dir: str,
                       image: Image.Image, k: int, dedupe_threshold: float) -> bool:
    """Run torch CLIP on the same queries and say whether its top k equal the ONNX ones; True if all do."""
    try:
        from prompt_search.models.torch_query import torch_vectors  # torch only when asked for
    except ImportError as error:  # the torch-free install (requirements-query.txt)
        print(f"\nno comparison with torch CLIP: {error}; set --COMPARE_WITH_TORCH=False for this install")
        return False

    vectors = torch_vectors(model_name, model_dir, queries[0].value, image)
    agree = True
    print()
    for query, vector in zip(queries, vectors, strict=True):
        for side, searched in sides.items():
            onnx_ids = [hit.id for hit in query.hits[side]]
            torch_ids = [hit.id for hit in rank_query(searched, query, vector, k, dedupe_threshold)]
            same = onnx_ids == torch_ids
            agree &= same
            verdict = "the same" if same else f"different: torch {torch_ids}, onnx {onnx_ids}"
            print(f"torch CLIP and ONNX CLIP top {k} {side} for the {query.kind} query: {verdict}")
    return agree
