"""CLIP text embeddings of the prompts of the metadata table: the prompt side of the search.

Open-prompts runs most prompts several times; each distinct prompt is embedded once, under the
id of its first row, so a top-k of prompts never shows one prompt twice. Prompts compare equal
when they differ only in case and white space. Rows without a prompt have nothing to embed.
The distinct prompts are listed on disk first (listing.py), and each batch reads its prompts from there.
"""

import os
from collections.abc import Iterator, Mapping, Sequence
from functools import partial

import numpy as np
import torch

from prompt_search.embedding.listing import Listing, write_listing
from prompt_search.embedding.reuse import Batch, text_hash
from prompt_search.embedding.set_writer import embed_items
from prompt_search.embedding.spark_embed import embed_on_spark
from prompt_search.models.clip import load
from prompt_search.models.openai_clip import choose_device
from prompt_search.output_sets import beside_set, claim_set, local_published_file
from prompt_search.settings import EmbedSettings
from prompt_search.spark import session_for
from prompt_search.storage import local_dir


def listing_file(folder: str) -> str:
    """Where the listing of the prompts to embed into folder lives while step 3' runs: beside the set (for a set at
    a URL, in this machine's folder for it), under a name no output set's glob (.NAME.*) takes for a folder."""
    parent, name = os.path.split(beside_set(folder, "-listing.arrow"))
    return os.path.join(local_dir(parent), name)


def encode_prompts(items: Sequence[tuple[str, str]], ranges: list[Sequence[int]],
                   settings: EmbedSettings) -> Iterator[Batch]:
    """Load the model and yield each range's batch of (id, prompt) items: the encode_batches of set_writer.embed_items.

    A module function, not a closure, so that a Spark task can run it too (spark_embed.py).
    """
    chosen = choose_device(settings.device)
    loaded = load(settings.model, chosen, settings.model_dir)
    print(f"embedding {sum(map(len, ranges))} of {len(items)} distinct prompts with {settings.model} on {chosen}")
    with torch.inference_mode():
        for indices in ranges:
            # a range is read in one go; reuse.py passes the prompts left to encode of each batch, any indices
            rows = items[indices.start : indices.stop] if isinstance(indices, range) else [items[i] for i in indices]
            ids, prompts = zip(*rows, strict=True)
            tokens = loaded.tokenize(list(prompts)).to(chosen)  # the model's own tokenizer
            yield loaded.model.encode_text(tokens).float().cpu().numpy().astype(np.float32), list(ids), []


def embed_prompts(metadata_file: str, folder: str, settings: EmbedSettings, by_text: bool = False,
                  known: Mapping[str, np.ndarray] | None = None) -> tuple[int, int]:
    """Embed each distinct prompt into folder; return (prompts embedded, rows without a prompt): (0, rows) and
    nothing written when no row has a prompt.

    by_text: each prompt's vector is taken from the published set when it holds that text (reuse.py, keyed by
    text_hash), and from known (text_hash -> vector) when given: a folder's prompts, re-embedded as it grows
    (serve.py --WATCH). Off for a CSV's millions of prompts, embedded once.

    distributor "pyspark": the batches are computed in Spark tasks (spark_embed.py), each task given its prompts.
    """
    path = listing_file(folder)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with claim_set(folder):  # claimed before the listing is written: another run writing the set writes it too
        return _embed_listed(metadata_file, folder, path, settings, by_text, known)


def _embed_listed(metadata_file: str, folder: str, path: str, settings: EmbedSettings, by_text: bool,
                  known: Mapping[str, np.ndarray] | None) -> tuple[int, int]:
    try:
        count, empty = write_listing(local_published_file(metadata_file), path)
        if not count:
            return 0, empty
        items = Listing(path)
        hashes = [text_hash(prompt) for prompt in items.columns(range(len(items)))[1]] if by_text else None
        encode = partial(encode_prompts, settings=settings)
        with session_for(settings.distributor, settings.spark_master) as spark:
            distribute = None if spark is None else partial(embed_on_spark, spark, items, encode)
            embed_items(folder, items, settings.model, settings.batch_size, partial(encode, items), unit="prompt",
                        digest=items.digest(), hashes=hashes, known=known, distribute=distribute)
    finally:
        if os.path.exists(path):  # rewritten by every run: a killed run's copy is simply replaced
            os.remove(path)
    return count, empty
