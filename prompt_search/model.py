"""Load a CLIP model by name or checkpoint path, on the right device, or say clearly why not."""

import os
import urllib.error
import warnings

import numpy as np
import torch

from prompt_search.cli import UserError


def choose_device(device: str) -> str:
    """"" picks the first GPU when there is one, else the CPU."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_clip(model: str, device: str, model_dir: str) -> tuple[torch.nn.Module, object]:
    """clip.load with errors a user can act on. On a GPU the weights stay fp16; on the CPU, fp32."""
    import clip  # after prompt_search/__init__.py has quieted its pkg_resources warning

    model_dir = os.path.expanduser(model_dir)
    if model in clip.available_models():
        url = clip.clip._MODELS[model]
        weights = os.path.join(model_dir, os.path.basename(url))
        try:
            return _quiet_load(model, device, download_root=model_dir)
        except (urllib.error.URLError, OSError) as error:
            raise UserError(
                f"CLIP weights for {model} are not at {weights} and could not be downloaded from {url} "
                f"({error}). Download that file and put it at {weights}, or set --MODEL=path/to/checkpoint.pt"
            ) from None
    if not os.path.isfile(model):
        raise UserError(f"--MODEL={model} is neither a CLIP model name ({', '.join(clip.available_models())}) "
                        "nor an existing checkpoint file")
    try:
        return _quiet_load(model, device)
    except (RuntimeError, KeyError, EOFError, ValueError) as error:
        raise UserError(f"{model} is not a CLIP checkpoint clip.load can read ({error})") from None


def _quiet_load(model: str, device: str, **kwargs):
    import clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # clip.load tries the deprecated torch.jit.load first
        return clip.load(model, device=device, jit=False, **kwargs)


def torch_vectors(model_name: str, model_dir: str, prompt: str, image) -> tuple[np.ndarray, np.ndarray]:
    """The query embeddings as plain torch CLIP computes them (the reference's "regular CLIP")."""
    import clip

    model, preprocess = load_clip(model_name, "cpu", model_dir)
    with torch.inference_mode():
        text = model.encode_text(clip.tokenize([prompt], truncate=True)).float()
        picture = model.encode_image(preprocess(image)[None]).float()
    return tuple(v[0].numpy() / np.linalg.norm(v[0].numpy()) for v in (text, picture))


def save_random_clip(path: str, full_size: bool = False, seed: int = 0) -> None:
    """Save a CLIP of the real architecture with random weights, in a file clip.load(path) reads.

    Real weights cannot be downloaded everywhere; tests use the tiny one, speed benchmarks the
    full-size ViT-B/32 (speed does not depend on the values).
    """
    from clip.model import CLIP

    torch.manual_seed(seed)
    if full_size:  # ViT-B/32
        model = CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)
    else:
        model = CLIP(32, 224, 2, 64, 32, 77, 49408, 64, 1, 2)
    torch.save(model.state_dict(), path)
