"""The embeddings set both sides write, batch by batch, so that a run can stop and resume.

Layout of an embeddings set (OUT_DIR/visual_embeddings or textual_embeddings, published as one when
every batch is done: see output_sets.py; a killed run resumes in the unpublished folder). Every file is read and
written through storage.py, so the set may live at a URL that Spark tasks on other machines write into:
  manifest.json              what the vectors were made from (model, item list, batch size)
  embeddings/NNNNNNNNN.npy   float32 N x D, L2-normalised, one file per batch
  ids/NNNNNNNNN.npy          the N ids of those rows, a unicode array (no pickle)
  hashes/NNNNNNNNN.npy       (when the caller gives content hashes) the content hash of each row (reuse.py)
  batches/NNNNNNNNN.json     written last: the batch is complete; lists the items it skipped
  skipped.csv                every skipped item and why
A batch whose items were all skipped has no .npy files (autofaiss skips empty files, and the
ids would drift from the vectors).
"""

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from prompt_search import storage
from prompt_search.embedding.reuse import HASHES, Encoder, Previous, reusing
from prompt_search.errors import UserError
from prompt_search.models.names import model_fingerprint
from prompt_search.output_sets import local_copy, output_set, published_set

MANIFEST = "manifest.json"


def items_digest(items: Sequence[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for item_id, source in items:
        digest.update(f"{item_id}\t{source}\n".encode())
    return digest.hexdigest()


def read_manifest(folder: str | None) -> dict | None:
    """The manifest of an embeddings folder, or None when it has none yet."""
    path = os.path.join(folder or "", MANIFEST)
    if not folder or not storage.exists(path):
        return None
    return json.loads(storage.read_bytes(path))


def write_manifest(folder: str, manifest: dict) -> None:
    with storage.atomic_write(os.path.join(folder, MANIFEST)) as f:
        f.write(json.dumps(manifest, indent=1).encode())


def resume_folder(folder: str, manifest: dict) -> set[int]:
    """Check that an unfinished folder holds embeddings of these inputs; return its complete batches."""
    previous = read_manifest(folder)
    if previous is None:
        return set()
    changed = [key for key in manifest if previous.get(key) != manifest[key]]
    if changed:
        raise UserError(
            f"{folder} holds unfinished embeddings of other inputs ({', '.join(changed)} changed since a run was "
            f"stopped). Run again with that run's settings to finish it, or delete {folder} to start over"
        )
    return {int(os.path.basename(p)[:-5]) for p in storage.glob(os.path.join(folder, "batches", "*.json"))}


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """The vectors as a set holds them: each row L2-normalised, float32."""
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def save_batch(folder: str, batch: int, vectors: np.ndarray, ids: list[str], skipped: list[tuple[str, str]],
               hashes: list[str] | None = None) -> None:
    """Write one batch atomically; the batches/ record goes last, marking it complete.

    hashes: the content hash of each row, when the items have one.
    """
    name = f"{batch:09d}"
    if len(ids):
        vectors = unit_rows(vectors)
        with storage.atomic_write(os.path.join(folder, "embeddings", name + ".npy")) as f:
            np.save(f, vectors.astype(np.float32))
        columns = {"ids": ids} if hashes is None else {"ids": ids, HASHES: hashes}
        for column, values in columns.items():
            with storage.atomic_write(os.path.join(folder, column, name + ".npy")) as f:
                np.save(f, np.array(values, dtype=str))
    with storage.atomic_write(os.path.join(folder, "batches", name + ".json")) as f:
        f.write(json.dumps({"count": len(ids), "skipped": skipped}).encode())


def _batch_records(folder: str) -> dict[int, dict]:
    """The batches/ record of every complete batch, by batch number, in order."""
    return {int(os.path.basename(path)[:-5]): json.loads(storage.read_bytes(path))
            for path in storage.glob(os.path.join(folder, "batches", "*.json"))}


def read_skipped(folder: str) -> list[tuple[str, str]]:
    """Every item any batch skipped, with its reason, in batch order."""
    return _skipped(_batch_records(folder))


def _skipped(records: dict[int, dict]) -> list[tuple[str, str]]:
    return [tuple(item) for record in records.values() for item in record["skipped"]]


def finished_skipped(folder: str, manifest: dict) -> list[tuple[str, str]]:
    """read_skipped of a folder about to be published, which must hold this run's batches only: its manifest, each
    batch of its items once, every item in one. Anything else (a writer that did not claim the set, on storage whose
    exclusive create is not atomic) is refused, and the folder is not published."""
    records = _batch_records(folder)
    batches = -(-manifest["count"] // manifest["batch_size"])
    rows = sum(record["count"] + len(record["skipped"]) for record in records.values())
    if read_manifest(folder) != manifest or list(records) != list(range(batches)) or rows != manifest["count"]:
        raise UserError(f"{folder} holds batches of other inputs beside this run's ({len(records)} batches of {rows} "
                        f"items, for {batches} batches of {manifest['count']}); nothing was published: delete "
                        f"{folder} and run again")
    return _skipped(records)


def batch_ranges(count: int, batch_size: int, done: set[int]) -> list[tuple[int, range]]:
    """(batch number, item indices) of each batch still to compute."""
    return [
        (batch, range(start, min(start + batch_size, count)))
        for batch, start in enumerate(range(0, count, batch_size))
        if batch not in done
    ]


def row_hashes(items: Sequence[tuple[str, str]], hashes: Sequence[str] | None, indices: range,
               ids: list[str]) -> list[str] | None:
    """The content hash of each vector of a batch (its ids: the items of indices the loader did not skip)."""
    if hashes is None:
        return None
    by_id = {items[i][0]: hashes[i] for i in indices}
    return [by_id[item_id] for item_id in ids]


def embed_items(path: str, items: Sequence[tuple[str, str]], model_name: str, batch_size: int,
                encode_batches: Encoder, unit: str, tables: dict[str, pa.Table] | None = None,
                rejected: list[tuple[str, str]] = (), digest: str | None = None,
                hashes: Sequence[str] | None = None, known: Mapping[str, np.ndarray] | None = None,
                distribute: Callable[[str, dict, list[tuple[int, range]]], None] | None = None,
                ) -> list[tuple[str, str]]:
    """Embed items (id, source) into the output set at path, resuming after the batches already complete.

    encode_batches(ranges) loads the model and yields, for each range of item indices in order,
    (vectors, ids, skipped (source, reason)). tables are written into the set as Parquet files beside
    the embeddings; rejected (source, reason) are sources refused before embedding, listed first in
    skipped.csv. A set of these same inputs is kept as it is. Returns every skipped or rejected item.
    digest: items_digest(items), when the caller can compute it without a Python loop over millions of items.
    hashes: the content hash of each item (reuse.py): a changed content makes a new set, whose items of
    unchanged content take their vectors from the published set of the same model instead of encode_batches.
    known: vectors by content hash already computed elsewhere (serve.py --WATCH's delta), reused as the published
    set's are.
    distribute(folder, manifest, todo): writes the (batch number, item indices) batches of todo into folder itself,
    with save_batch, elsewhere (spark_embed.py) instead of encode_batches here.
    """
    manifest = {"model": model_fingerprint(model_name), "batch_size": batch_size,
                "items": digest or items_digest(items), "count": len(items)}
    if hashes is not None:
        manifest["contents"] = hashlib.sha256("\n".join(hashes).encode()).hexdigest()
    published = published_set(path)  # resolved once: a set published meanwhile is not half read
    previous_manifest = read_manifest(published and published.folder)
    if previous_manifest == manifest:
        print(f"{path}: already holds the embeddings of these {len(items)} items")
        return [*rejected, *read_skipped(published.folder)]
    if hashes is not None:
        same_model = previous_manifest is not None and previous_manifest["model"] == manifest["model"]
        previous = Previous(local_copy(path, published) if same_model else None, known)
        print(f"{path}: {previous.summary(hashes)}")
        encode_batches = reusing(encode_batches, items, hashes, previous)
    with output_set(path, resume=True) as folder:
        todo = batch_ranges(len(items), batch_size, resume_folder(folder, manifest))
        if todo and distribute:
            write_manifest(folder, manifest)
            distribute(folder, manifest, todo)
        elif todo:
            remaining = sum(len(r) for _, r in todo)
            with tqdm(total=len(items), initial=len(items) - remaining, unit=unit, disable=None) as bar:
                batches = encode_batches([r for _, r in todo])
                for (batch, indices), (vectors, ids, skipped) in zip(todo, batches, strict=True):
                    if read_manifest(folder) is None:  # only now is there work to protect from other inputs
                        write_manifest(folder, manifest)
                    save_batch(folder, batch, vectors, ids, skipped, row_hashes(items, hashes, indices, ids))
                    bar.update(len(ids) + len(skipped))
        skipped = [*rejected, *finished_skipped(folder, manifest)]
        text = io.StringIO(newline="")
        csv.writer(text).writerows([("source", "reason"), *skipped])
        with storage.atomic_write(os.path.join(folder, "skipped.csv")) as f:
            f.write(text.getvalue().encode())
        for name, table in (tables or {}).items():
            with storage.atomic_write(os.path.join(folder, name)) as f:
                pq.write_table(table, f)
    return skipped
