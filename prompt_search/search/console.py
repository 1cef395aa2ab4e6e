"""Step 5 at the console: its query image and two queries, the results printed, and the comparison with torch
CLIP's own answers (torch imported only for it: the query path needs none)."""

import os

from PIL import Image

from prompt_search.errors import UserError
from prompt_search.pixels import UNREADABLE, open_rgb
from prompt_search.search.core import Query, SearchIndex, details, search
from prompt_search.search.encoder import QueryEncoder
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


def encode_queries(encoder: QueryEncoder, prompt: str, image: Image.Image, image_path: str) -> list[Query]:
    """The text query and the image query, each as an L2-normalised ONNX CLIP embedding."""
    text, note = encoder.text(prompt)
    return [Query("text", prompt, text, note), Query("image", image_path, encoder.image(encoder.pixels(image)))]


def print_results(queries: list[Query]) -> None:
    for query in queries:
        for side, hits in query.hits.items():
            print(f"\nSIMILAR {side.upper()} TO THE {query.kind.upper()} {query.value!r}")
            if query.note:
                print(f"  (the prompt is {query.note})")
            for hit in hits:
                where = hit.url or hit.path
                alike = f"  (and {hit.alike} near-identical)" if hit.alike else ""
                print(f"  {hit.rank:>2}  {hit.score:.4f}  {hit.id}  {hit.prompt[:80]!r}  {where}{alike}")
                if shown := details(hit):  # a line of its own: the result line keeps its layout for scripts
                    print(f"      {shown}")


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
            torch_ids = [hit.id for hit in search(searched, vector, k, dedupe_threshold)]
            same = onnx_ids == torch_ids
            agree &= same
            verdict = "the same" if same else f"different: torch {torch_ids}, onnx {onnx_ids}"
            print(f"torch CLIP and ONNX CLIP top {k} {side} for the {query.kind} query: {verdict}")
    return agree
