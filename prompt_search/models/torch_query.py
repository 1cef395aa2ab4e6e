"""The query vectors as plain torch CLIP computes them (the reference's "regular CLIP"): step 5 compares its
ONNX results with them. Its first import is torch, which the torch-free install lacks."""

import numpy as np
import torch
from PIL import Image

from prompt_search.models.clip import load


def torch_vectors(model_name: str, model_dir: str, prompt: str, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The query embeddings as plain torch CLIP computes them (the reference's "regular CLIP")."""
    loaded = load(model_name, "cpu", model_dir)
    with torch.inference_mode():
        text = loaded.model.encode_text(loaded.tokenize([prompt])).float()
        picture = loaded.model.encode_image(loaded.preprocess(image)[None]).float()
    return tuple(v[0].numpy() / np.linalg.norm(v[0].numpy()) for v in (text, picture))
