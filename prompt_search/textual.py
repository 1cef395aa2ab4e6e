"""CLIP text embeddings of the prompts of the metadata table: the prompt side of the search.

Open-prompts runs most prompts several times; each distinct prompt is embedded once, under the
id of its first row, so a top-k of prompts never shows one prompt twice. Prompts compare equal
when they differ only in case and white space. Rows without a prompt have nothing to embed.
"""

import hashlib
import os
from collections.abc import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from prompt_search.cli import UserError
from prompt_search.clip_models import load
from prompt_search.embed import Batch, embed_items
from prompt_search.model import choose_device


def distinct_prompts(metadata_file: str) -> tuple[list[tuple[str, str]], int]:
    """(id of first row, prompt) for each distinct non-empty prompt, and the number of rows without one."""
    if not os.path.isfile(metadata_file):
        raise UserError(f"{metadata_file} not found: run extract_img_links_from_csv.py first")
    seen: set[bytes] = set()
    items, empty = [], 0
    for batch in pq.ParquetFile(metadata_file).iter_batches(columns=["id", "prompt"]):
        for row_id, prompt in zip(batch["id"].to_pylist(), batch["prompt"].to_pylist(), strict=True):
            key = " ".join((prompt or "").split()).casefold()
            if not key:
                empty += 1
                continue
            digest = hashlib.blake2b(key.encode(), digest_size=12).digest()
            if digest not in seen:
                seen.add(digest)
                items.append((row_id, prompt))
    return items, empty


def embed_prompts(metadata_file: str, folder: str, model_name: str, model_dir: str, device: str,
                  batch_size: int) -> tuple[int, int]:
    """Embed each distinct prompt into folder; return (prompts embedded, rows without a prompt)."""
    items, empty = distinct_prompts(metadata_file)
    if not items:
        raise UserError(f"no prompts in {metadata_file}: nothing to embed")

    def encode_batches(ranges: list[range]) -> Iterator[Batch]:
        chosen = choose_device(device)
        loaded = load(model_name, chosen, model_dir)
        print(f"embedding {sum(map(len, ranges))} of {len(items)} distinct prompts with {model_name} on {chosen}")
        with torch.inference_mode():
            for indices in ranges:
                ids, prompts = zip(*(items[i] for i in indices), strict=True)
                tokens = loaded.tokenize(list(prompts)).to(chosen)  # the model's own tokenizer
                yield loaded.model.encode_text(tokens).float().cpu().numpy().astype(np.float32), list(ids), []

    embed_items(folder, items, model_name, batch_size, encode_batches, unit="prompt")
    return len(items), empty
