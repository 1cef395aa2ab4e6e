"""Each image's scores, computed by step 4 from the vectors the steps already made, for results to be filtered and
sorted by (items.arrow's `adherence` and `aesthetic` columns, null where a row has none):

  adherence  how well the image follows its own prompt: the cosine between its vector and its prompt's vector under
             the index's model (CLIPScore's quantity, before its rescaling). The prompt's vector is step 3''s, found
             by the prompt's key (listing.prompt_keys: the prompt side's own rule); a prompt step 3' has not
             embedded is embedded here. Rows without a prompt have none.
  aesthetic  LAION's aesthetic predictor (AESTHETIC_MODEL) applied to the image's unit vector.
  prompt_group  the image's prompt as a 64-bit number (rows of one prompt share it): results group by it.
"""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from prompt_search.embedding.listing import prompt_keys
from prompt_search.embedding.set_writer import MANIFEST, unit_rows
from prompt_search.embedding.textual import encode_prompts
from prompt_search.errors import UserError
from prompt_search.index.aesthetic import load_aesthetic
from prompt_search.index.embedding_files import SourceFile, source_files
from prompt_search.layout import VECTORS_FILE
from prompt_search.models.names import model_mismatch
from prompt_search.output_sets import current_set
from prompt_search.settings import EmbedSettings

SCORES_FILE = "scores.parquet"  # in the set while step 4 writes it: joined into items.arrow, then removed
CHUNK_ROWS = 65_536  # image vectors scored at once


@dataclass(frozen=True)
class Prompts:
    """Where the images' prompts get their vectors for the adherence score: step 3''s set, and the model to embed
    those it lacks."""
    textual_set: str
    embed: EmbedSettings


def scores_table(ids: pa.ChunkedArray, out: str, metadata_file: str, model: str, aesthetic_model: str,
                 prompts: Prompts | None) -> str:
    """out/scores.parquet: id, adherence (with prompts) and aesthetic (with aesthetic_model) of each row, the ids
    and out/vectors.npy in index order; its path, or "" when there is no score to compute."""
    vectors = np.load(os.path.join(out, VECTORS_FILE), mmap_mode="r")
    aesthetic = load_aesthetic(aesthetic_model, vectors.shape[1]) if aesthetic_model else None
    has_metadata = bool(metadata_file) and os.path.isfile(metadata_file)
    if aesthetic is None and (prompts is None or not has_metadata):
        return ""
    columns = {"id": ids}
    if prompts is not None and has_metadata:
        metadata = pq.read_table(metadata_file, columns=["id", "prompt"])
        row_prompts = _prompts_of(ids, metadata)
        keys = prompt_keys(row_prompts)
        keys = pc.if_else(pc.equal(keys, ""), pa.scalar(None, pa.string()), keys)
        columns["prompt_group"] = group_numbers(keys)
        columns["adherence"] = pa.array(_adherence(row_prompts, keys, vectors, metadata, prompts.textual_set, model,
                                                   prompts.embed), pa.float32(), from_pandas=True)
    if aesthetic is not None:
        columns["aesthetic"] = pa.array(np.concatenate(
            [aesthetic.score(np.asarray(vectors[start:start + CHUNK_ROWS], np.float32))
             for start in range(0, len(vectors), CHUNK_ROWS)] or [np.zeros(0, np.float32)]), pa.float32())
    path = os.path.join(out, SCORES_FILE)
    pq.write_table(pa.table(columns), path)
    return path


def group_numbers(keys: pa.Array) -> pa.Array:
    """Each row's prompt as a number (the same for rows of one prompt, as the prompt side counts them: its key),
    null for a row without one: what one-result-per-prompt groups by, loaded whole at 8 bytes a row."""
    numbers = pd.util.hash_array(np.asarray(pc.fill_null(keys, "").to_numpy(zero_copy_only=False), object))
    return pa.array(numbers, pa.uint64(), mask=pc.is_null(keys).to_numpy(zero_copy_only=False))


def _adherence(prompts: pa.Array, keys: pa.Array, vectors: np.ndarray, metadata: pa.Table, textual_set: str,
               model: str, embed: EmbedSettings) -> np.ndarray:
    """The cosine of each row's vector and its prompt's (NaN for a row without a prompt); prompts and keys: each
    row's prompt and its key, null where it has none. Step 3''s vectors are read a file at a time, each once, with
    the images of its prompts: never the whole set (20 GB at 10M prompts)."""
    known_keys, files = _embedded_prompts(textual_set, metadata, model)
    stored = len(known_keys)
    unique = pc.unique(keys.drop_null())
    missing = pc.filter(unique, pc.invert(pc.is_in(unique, value_set=known_keys)))
    embedded = np.zeros((0, vectors.shape[1]), np.float32)
    if len(missing):  # the first row's prompt of each key not embedded yet
        first = pc.index_in(missing, value_set=keys)
        embedded = _embed(prompts.take(first).to_pylist(), embed, model, vectors.shape[1])
        known_keys = pa.concat_arrays([known_keys, missing])
    at = pc.index_in(keys, value_set=known_keys)  # each row's prompt: its position in the files, then in embedded
    scores = np.full(len(prompts), np.nan, np.float32)
    rows = np.flatnonzero(at.is_valid().to_numpy(zero_copy_only=False))
    targets = pc.fill_null(at, 0).to_numpy()[rows]
    order = np.argsort(targets, kind="stable")  # rows by their prompt's position: a file's rows are together
    rows, targets = rows[order], targets[order]
    ends = np.searchsorted(targets, [f.start + f.count for f in files] + [stored + len(embedded)])
    for source, begin, end in zip([*files, None], [0, *ends[:-1]], ends, strict=True):
        if begin == end:
            continue
        prompt = embedded if source is None else unit_rows(np.load(source.vectors, allow_pickle=False))
        offset = stored if source is None else source.start
        for start in range(begin, end, CHUNK_ROWS):
            chosen = rows[start:min(start + CHUNK_ROWS, end)]
            image = unit_rows(np.asarray(vectors[chosen], np.float32))
            scores[chosen] = np.einsum("ij,ij->i", image, prompt[targets[start:start + len(chosen)] - offset])
    return scores


def _embedded_prompts(textual_set: str, metadata: pa.Table, model: str) -> tuple[pa.Array, list[SourceFile]]:
    """The key of every prompt step 3' embedded with this model (by its row's prompt), in the order of its set's
    files, and those files."""
    folder = current_set(textual_set)
    empty = (pa.array([], pa.string()), [])
    if folder is None or not os.path.isfile(os.path.join(folder, MANIFEST)):
        return empty
    with open(os.path.join(folder, MANIFEST)) as f:
        if json.load(f).get("model") != model:  # another model's prompt vectors: embedded again here
            return empty
    files = source_files(folder)
    if not files:
        return empty
    ids = pa.chunked_array([pa.array(np.load(f.ids, allow_pickle=False), pa.string()) for f in files])
    return prompt_keys(_prompts_of(ids, metadata)), files


def _prompts_of(ids: pa.ChunkedArray, metadata: pa.Table) -> pa.Array:
    """The metadata table's prompt of each id (null where it has none)."""
    rows = pc.index_in(ids, value_set=metadata.column("id").combine_chunks())
    taken = metadata.column("prompt").combine_chunks().take(rows)
    return taken.combine_chunks() if isinstance(taken, pa.ChunkedArray) else taken


def _embed(prompts: Sequence[str], embed: EmbedSettings, model: str, dimension: int) -> np.ndarray:
    """The unit vectors of prompts step 3' has not embedded, with the index's model."""
    mismatch = model_mismatch(model, embed.model)
    if mismatch:  # a prompt's vector must be of the images' model to score them
        raise UserError(f"prompts step 3' has not embedded are embedded here, but the images' vectors are {mismatch}")
    items = [(str(i), prompt) for i, prompt in enumerate(prompts)]
    ranges = [range(start, min(start + embed.batch_size, len(items))) for start in range(0, len(items),
                                                                                         embed.batch_size)]
    vectors = [batch for batch, _, _ in encode_prompts(items, ranges, embed)]
    found = np.concatenate(vectors) if vectors else np.zeros((0, dimension), np.float32)
    return unit_rows(found.astype(np.float32))
