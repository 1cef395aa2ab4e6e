"""Step 5: encode the queries with ONNX CLIP and search the indices, on the CPU without torch."""

import os
from dataclasses import dataclass, field

import faiss
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from prompt_search.cli import UserError
from prompt_search.images import open_rgb, to_pixels
from prompt_search.index import IndexPaths
from prompt_search.onnx_clip import TEXTUAL_FILE, VISUAL_FILE, encode_image, encode_text, model_path, start_session
from prompt_search.tokenizer import tokenize


@dataclass
class Hit:
    rank: int
    score: float
    id: str
    prompt: str = ""
    url: str = ""
    path: str = ""  # the local image, when the hit is a downloaded or local image


@dataclass
class Query:
    kind: str  # "text" or "image"
    value: str  # the prompt, or the image's path
    vector: np.ndarray
    note: str = ""
    hits: dict[str, list[Hit]] = field(default_factory=dict)  # per index: "images", "prompts"


def read_image(path: str) -> Image.Image:
    if not os.path.isfile(path):
        raise UserError(f"query image {path} not found: set --INPUT_IMG_PATH to an image file")
    try:
        return open_rgb(path)
    except (OSError, ValueError, SyntaxError) as error:
        raise UserError(f"query image {path} cannot be read: {error}") from None


def encode_queries(onnx_dir: str, prompt: str, image: Image.Image, image_path: str, int8: bool = False,
                   threads: int = 0) -> list[Query]:
    """The text query and the image query, each as an L2-normalised ONNX CLIP embedding.

    The tokens stop at the end token (CLIP's text transformer is causal and reads the end token,
    so padding after it cannot change the result); int8 uses the quantised models; threads=0 is
    one per physical core.
    """
    if not prompt.strip():
        raise UserError("the text query is empty: set --INPUT_PROMPT to some text")
    tokens, truncated = tokenize([prompt])
    note = "longer than CLIP's 77 tokens: only its beginning was searched" if truncated[0] else ""
    text = encode_text(start_session(model_path(onnx_dir, TEXTUAL_FILE, int8), threads), tokens)[0]
    pixels = to_pixels(image)[None]
    picture = encode_image(start_session(model_path(onnx_dir, VISUAL_FILE, int8), threads), pixels)[0]
    return [Query("text", prompt, text, note), Query("image", image_path, picture)]


def open_index(paths: IndexPaths) -> tuple[faiss.Index, np.ndarray] | None:
    """The index memory-mapped read-only and its ids, or None when it was not built."""
    if not os.path.exists(paths.index):
        return None
    index = faiss.read_index(paths.index, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    ids = np.load(paths.ids, allow_pickle=False)
    if len(ids) != index.ntotal:
        raise UserError(f"{paths.ids} has {len(ids)} ids for {index.ntotal} vectors: rebuild the index")
    return index, ids


def search(index: faiss.Index, ids: np.ndarray, vector: np.ndarray, k: int) -> list[Hit]:
    scores, labels = index.search(vector[None].astype(np.float32), min(k, index.ntotal))
    return [Hit(rank, float(score), str(ids[label]))
            for rank, (score, label) in enumerate(zip(scores[0], labels[0], strict=True), 1) if label >= 0]


def describe(hits: list[Hit], metadata_file: str, images_file: str) -> None:
    """Fill in each hit's prompt and link from the metadata table, and its local image path."""
    wanted = [hit.id for hit in hits]
    rows, paths = {}, {}
    if wanted and os.path.exists(metadata_file):
        table = pq.read_table(metadata_file, columns=["id", "prompt", "url"], filters=[("id", "in", wanted)])
        rows = {row["id"]: row for row in table.to_pylist()}
    if wanted and os.path.exists(images_file):
        table = pq.read_table(images_file, filters=[("id", "in", wanted)])
        paths = dict(zip(table["id"].to_pylist(), table["path"].to_pylist(), strict=True))
    for hit in hits:
        row = rows.get(hit.id, {})
        hit.prompt, hit.url, hit.path = row.get("prompt") or "", row.get("url") or "", paths.get(hit.id, "")


def print_results(queries: list[Query]) -> None:
    for query in queries:
        for side, hits in query.hits.items():
            print(f"\nSIMILAR {side.upper()} TO THE {query.kind.upper()} {query.value!r}")
            if query.note:
                print(f"  (the prompt is {query.note})")
            for hit in hits:
                where = hit.url or hit.path
                print(f"  {hit.rank:>2}  {hit.score:.4f}  {hit.id}  {hit.prompt[:80]!r}  {where}")


def compare_with_torch(queries: list[Query], sides: dict, model_name: str, model_dir: str, image: Image.Image,
                       k: int) -> bool:
    """Run torch CLIP on the same queries and say whether its top k equal the ONNX ones; True if all do."""
    try:
        from prompt_search.model import torch_vectors  # torch only when asked for
    except ImportError as error:  # the torch-free install (requirements-query.txt)
        print(f"\nno comparison with torch CLIP: {error}; set --COMPARE_WITH_TORCH=False for this install")
        return False

    vectors = torch_vectors(model_name, model_dir, queries[0].value, image)
    agree = True
    print()
    for query, vector in zip(queries, vectors, strict=True):
        for side, (index, ids) in sides.items():
            onnx_ids = [hit.id for hit in query.hits[side]]
            torch_ids = [hit.id for hit in search(index, ids, vector, k)]
            same = onnx_ids == torch_ids
            agree &= same
            verdict = "the same" if same else f"different: torch {torch_ids}, onnx {onnx_ids}"
            print(f"torch CLIP and ONNX CLIP top {k} {side} for the {query.kind} query: {verdict}")
    return agree
