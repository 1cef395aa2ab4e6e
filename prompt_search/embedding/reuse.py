"""Incremental embedding: a rerun takes the vectors of unchanged contents from the published set.

Each set of image embeddings records the content hash of every row (hashes/NNNNNNNNN.npy beside
embeddings/NNNNNNNNN.npy). A rerun on changed inputs still writes a whole new set, batch by batch as a
full run would, but an item whose content hash the published set (of the same model) holds gets that
vector instead of being decoded and encoded again: a renamed or copied file is reused, a changed file is
encoded, a deleted one is simply not listed. Keying on the content, not the path, is what rclip does.
"""

import glob
import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from prompt_search import storage

HASHES = "hashes"  # folder of the set: the content hash of each row, a unicode array per batch
Batch = tuple[np.ndarray, list[str], list[tuple[str, str]]]  # vectors, their ids, skipped (source, reason)
Ranges = list[Sequence[int]]  # the item indices of each batch to encode
Encoder = Callable[[Ranges], Iterator[Batch]]  # one Batch for each batch of item indices, in order


def content_hash(path: str) -> str:
    """blake2b (128 bits) of the file's bytes; "" when it cannot be read (never reused: the loader says why)."""
    try:
        with storage.open_file(path) as f:
            return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
    except OSError:  # FileNotFoundError and the like, at a URL too
        return ""


def text_hash(text: str) -> str:
    """A prompt's content hash, for step 3' of a folder's prompts (embed_prompts' by_text)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class Previous:
    """The vectors of a published set by content hash; each batch file is memory-mapped when first needed."""

    def __init__(self, folder: str | None, known: Mapping[str, np.ndarray] | None = None):
        self.folder = folder
        self.known = dict(known or {})  # hash -> vector computed elsewhere, in memory
        self.rows: dict[str, tuple[str, int]] = {digest: ("", 0) for digest in self.known}
        self.copies: Counter[str] = Counter()  # rows per hash, to count the vectors a rerun drops
        self._mapped: dict[str, np.ndarray] = {}
        for path in sorted(glob.glob(os.path.join(folder, HASHES, "*.npy"))) if folder else []:
            name = os.path.basename(path)
            digests = np.load(path, allow_pickle=False).tolist()
            self.copies.update(digests)
            for row, digest in enumerate(digests):
                if digest not in self.known:
                    self.rows.setdefault(digest, (name, row))
        self.rows.pop("", None)

    def vector(self, digest: str) -> np.ndarray:
        if digest in self.known:
            return self.known[digest]
        name, row = self.rows[digest]
        if name not in self._mapped:
            self._mapped[name] = np.load(os.path.join(self.folder, "embeddings", name), mmap_mode="r")
        return self._mapped[name][row]

    def summary(self, hashes: Sequence[str]) -> str:
        """"N added, M reused, K removed": items to encode, items reused, published vectors no item has now."""
        now = set(hashes)
        reused = sum(digest in self.rows for digest in hashes)
        removed = sum(count for digest, count in self.copies.items() if digest not in now)
        return f"{len(hashes) - reused} added, {reused} reused, {removed} removed"


def reusing(encode_batches: Encoder, items: Sequence[tuple[str, str]], hashes: Sequence[str],
            previous: Previous) -> Encoder:
    """encode_batches, but each batch's items that previous holds are taken from it, not encoded.

    Only the other items reach encode_batches (before any decoding, so every input path works unchanged),
    and it is not called at all when there are none; rows stay in item order, as a full run writes them.
    """

    def encode(ranges: Ranges) -> Iterator[Batch]:
        new = [[i for i in indices if hashes[i] not in previous.rows] for indices in ranges]
        fresh = encode_batches([todo for todo in new if todo]) if any(new) else iter(())
        for indices, todo in zip(ranges, new, strict=True):
            vectors, ids, skipped = next(fresh) if todo else ((), [], [])
            encoded = dict(zip(ids, vectors, strict=True))
            rows = []
            for i in indices:
                item_id = items[i][0]
                vector = previous.vector(hashes[i]) if hashes[i] in previous.rows else encoded.get(item_id)
                if vector is not None:  # None: the loader skipped it
                    rows.append((item_id, vector))
            merged = np.stack([vector for _, vector in rows]) if rows else np.empty((0, 0), np.float32)
            yield merged, [item_id for item_id, _ in rows], skipped
        next(fresh, None)  # runs the encoder past its last batch, to its end (it prints its summary there)

    return encode
