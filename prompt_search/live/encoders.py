"""The model of serve.py --WATCH, loaded once: new images and prompts encoded as steps 3 and 3' encode them (the same
decode, crop, normalisation and model calls), a few at a time as they arrive."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from prompt_search.embedding.gpu_input import cpu_sample, normalise
from prompt_search.embedding.set_writer import unit_rows
from prompt_search.embedding.visual import stack_crops
from prompt_search.models.clip import load
from prompt_search.models.openai_clip import choose_device
from prompt_search.settings import EmbedSettings


class Encoders:
    """CLIP on DEVICE; images decoded in a few threads (PIL lets go of the GIL while it decodes and resizes)."""

    def __init__(self, settings: EmbedSettings):
        self.device = choose_device(settings.device)
        self.clip = load(settings.model, self.device, settings.model_dir)
        self.decoders = ThreadPoolExecutor(min(os.cpu_count() or 1, 4), thread_name_prefix="watch-decode")

    @property
    def dim(self) -> int:
        return self.clip.dim

    def images(self, items: list[tuple[str, str]]) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
        """(unit vectors, their ids, skipped (path, reason)) of (id, path) items, as step 3's CPU path makes them."""
        pixels = self.clip.pixels
        samples = list(self.decoders.map(lambda item: cpu_sample(item[0], item[1], pixels), items))
        crops, ids, skipped = stack_crops(samples)
        if crops is None:
            return np.zeros((0, self.dim), np.float32), [], skipped
        with torch.inference_mode():
            batch = normalise(crops.to(self.device).permute(0, 3, 1, 2), pixels, self.clip.dtype)
            vectors = self.clip.model.encode_image(batch).float().cpu().numpy()
        return unit_rows(vectors), ids, skipped

    def prompts(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of the prompts, as step 3' makes them (the model's own tokenizer, long prompts cut)."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            tokens = self.clip.tokenize(texts).to(self.device)
            return unit_rows(self.clip.model.encode_text(tokens).float().cpu().numpy())
