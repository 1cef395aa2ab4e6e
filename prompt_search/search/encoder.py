"""One query encoder for step 5 and the server: a text or an image to its unit vector with the ONNX CLIP of an
export, on the CPU without torch, read with the exported model's own tokenizer and preprocess."""

import numpy as np
from PIL import Image

from prompt_search.errors import UserError
from prompt_search.models.onnx_clip import (
    TEXTUAL_FILE,
    VISUAL_FILE,
    encode_image,
    encode_text,
    is_current,
    model_path,
    query_specs,
    start_session,
)
from prompt_search.models.tokenizer import tokenize
from prompt_search.pixels import to_pixels
from prompt_search.settings import QuerySettings


class QueryEncoder:
    """The two ONNX sessions of an export, opened once. int8 uses the quantised models; threads=0 is one per
    physical core."""

    def __init__(self, onnx_dir: str, int8: bool = False, threads: int = 0):
        self.text_spec, self.pixel_spec = query_specs(onnx_dir)  # the model's own tokenizer and preprocess
        self.text_session = start_session(model_path(onnx_dir, TEXTUAL_FILE, int8), threads)
        self.image_session = start_session(model_path(onnx_dir, VISUAL_FILE, int8), threads)

    def text(self, text: str) -> tuple[np.ndarray, str]:
        """The text's vector, and a note when it is longer than the model reads ("" otherwise).

        The tokens stop at the end token (CLIP's text transformer is causal and reads the end token, so padding
        after it cannot change the result).
        """
        tokens, truncated = tokenize([text], spec=self.text_spec)
        note = f"longer than CLIP's {self.text_spec.context_length} tokens: only its beginning was searched"
        return encode_text(self.text_session, tokens)[0], note if truncated[0] else ""

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The model's input for an image: its preprocess, without torch."""
        return to_pixels(image, self.pixel_spec)

    def image(self, pixels: np.ndarray) -> np.ndarray:
        """The vector of an image's pixels (QueryEncoder.pixels)."""
        return encode_image(self.image_session, pixels[None])[0]


def ensure_export(onnx_dir: str, settings: QuerySettings) -> None:
    """Export the model to onnx_dir unless it holds the current export already.

    Exporting needs torch, which a query-only install (requirements-query.txt) lacks: there, a missing or stale
    export is one line saying where to make it, not a traceback.
    """
    if is_current(onnx_dir, settings.model):
        return
    try:
        from prompt_search.models.onnx_export import export_onnx  # torch, needed only to export
    except ImportError as error:
        raise UserError(f"{onnx_dir} holds no current ONNX export of {settings.model}, and making one needs torch "
                        f"({error}): run test_visual_knn_index.py once where requirements.txt is installed, or "
                        "install it here") from None
    export_onnx(settings.model, settings.model_dir, onnx_dir)


def open_encoder(onnx_dir: str, settings: QuerySettings) -> QueryEncoder:
    """The query encoder of the model's export in onnx_dir (ensure_export first)."""
    return QueryEncoder(onnx_dir, settings.quantize_int8, settings.query_threads)
