"""The embeddings folder both sides write, batch by batch, so that a run can stop and resume.

Layout of an embeddings folder (read by the index step):
  manifest.json              what the vectors were made from (model, item list, batch size)
  embeddings/NNNNNNNNN.npy   float32 N x D, L2-normalised, one file per batch
  ids/NNNNNNNNN.npy          the N ids of those rows, a unicode array (no pickle)
  batches/NNNNNNNNN.json     written last: the batch is complete; lists the items it skipped
A batch whose items were all skipped has no .npy files (autofaiss skips empty files, and the
ids would drift from the vectors).
"""

import csv
import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterator

import numpy as np
from tqdm import tqdm

from prompt_search.cli import UserError
from prompt_search.files import atomic_path, model_fingerprint

MANIFEST = "manifest.json"
Batch = tuple[np.ndarray, list[str], list[tuple[str, str]]]  # vectors, their ids, skipped (source, reason)


def items_digest(items: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for item_id, source in items:
        digest.update(f"{item_id}\t{source}\n".encode())
    return digest.hexdigest()


def open_folder(folder: str, manifest: dict) -> set[int]:
    """Start or resume writing folder for these inputs; return the numbers of the batches already complete."""
    path = os.path.join(folder, MANIFEST)
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        changed = [key for key in manifest if previous.get(key) != manifest[key]]
        if changed:
            raise UserError(
                f"{folder} holds embeddings of other inputs ({', '.join(changed)} changed since they were written). "
                f"Delete {folder} to recompute them, or write elsewhere with --OUT_DIR"
            )
    else:
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
    return {int(os.path.basename(p)[:-5]) for p in glob.glob(os.path.join(folder, "batches", "*.json"))}


def save_batch(folder: str, batch: int, vectors: np.ndarray, ids: list[str], skipped: list[tuple[str, str]]) -> None:
    """Write one batch atomically; the batches/ record goes last, marking it complete."""
    name = f"{batch:09d}"
    if len(ids):
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        with atomic_path(os.path.join(folder, "embeddings", name + ".npy")) as tmp, open(tmp, "wb") as f:
            np.save(f, vectors.astype(np.float32))
        with atomic_path(os.path.join(folder, "ids", name + ".npy")) as tmp, open(tmp, "wb") as f:
            np.save(f, np.array(ids, dtype=str))
    with atomic_path(os.path.join(folder, "batches", name + ".json")) as tmp, open(tmp, "w") as f:
        json.dump({"count": len(ids), "skipped": skipped}, f)


def read_skipped(folder: str) -> list[tuple[str, str]]:
    """Every item any batch skipped, with its reason, in batch order."""
    skipped = []
    for path in sorted(glob.glob(os.path.join(folder, "batches", "*.json"))):
        with open(path) as f:
            skipped += [tuple(item) for item in json.load(f)["skipped"]]
    return skipped


def batch_ranges(count: int, batch_size: int, done: set[int]) -> list[tuple[int, range]]:
    """(batch number, item indices) of each batch still to compute."""
    return [
        (batch, range(start, min(start + batch_size, count)))
        for batch, start in enumerate(range(0, count, batch_size))
        if batch not in done
    ]


def embed_items(folder: str, items: list[tuple[str, str]], model_name: str, batch_size: int,
                encode_batches: Callable[[list[range]], Iterator[Batch]], unit: str) -> list[tuple[str, str]]:
    """Embed items (id, source) into folder, resuming after the batches already complete.

    encode_batches(ranges) loads the model and yields, for each range of item indices in order,
    (vectors, ids, skipped (source, reason)). Returns every skipped item.
    """
    manifest = {"model": model_fingerprint(model_name), "batch_size": batch_size,
                "items": items_digest(items), "count": len(items)}
    todo = batch_ranges(len(items), batch_size, open_folder(folder, manifest))
    if todo:
        remaining = sum(len(r) for _, r in todo)
        with tqdm(total=len(items), initial=len(items) - remaining, unit=unit, disable=None) as bar:
            batches = encode_batches([r for _, r in todo])
            for (batch, _), (vectors, ids, skipped) in zip(todo, batches, strict=True):
                save_batch(folder, batch, vectors, ids, skipped)
                bar.update(len(ids) + len(skipped))
    skipped = read_skipped(folder)
    with atomic_path(os.path.join(folder, "skipped.csv")) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([("source", "reason"), *skipped])
    return skipped
