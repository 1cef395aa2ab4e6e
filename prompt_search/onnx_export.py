"""Export a torch CLIP to visual.onnx and textual.onnx, checked against torch before they are kept.

The text encoder is exported with a dynamic sequence length: CLIP's text transformer is causal
and reads the end token's position, so feeding only up to the longest end token gives the
77-token result while doing a fraction of the work. The causal mask is sliced to that length
(an export without it returns wrong embeddings).
"""

import json
import os
import warnings

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from prompt_search.files import atomic_path, model_fingerprint
from prompt_search.model import choose_device, load_clip
from prompt_search.onnx_clip import MODEL_RECORD, PROVIDERS, TEXTUAL_FILE, VISUAL_FILE

MIN_COSINE = 0.9999  # onnxruntime against torch on random inputs, or the export is refused


class TextEncoder(torch.nn.Module):
    """encode_text for any sequence length up to 77, with the causal mask made for that length.

    The model's own blocks hold a fixed 77 x 77 mask, and a trace of nn.MultiheadAttention fixes
    the length, so attention is written out here with the blocks' own weights.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.token_embedding(tokens) + m.positional_embedding[: tokens.shape[1]]
        for block in m.transformer.resblocks:
            x = x + self._attention(block.attn, block.ln_1(x))
            x = x + block.mlp(block.ln_2(x))
        x = m.ln_final(x)
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ m.text_projection

    @staticmethod
    def _attention(attn: torch.nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
        heads = [part.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)
                 for part in F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)]
        out = F.scaled_dot_product_attention(*heads, is_causal=True)
        return attn.out_proj(out.transpose(1, 2).flatten(2))


class ImageEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.visual = model.visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)


def export_onnx(model_name: str, model_dir: str, onnx_dir: str) -> None:
    """Export the model to onnx_dir's visual and textual files, and record which model they are."""
    model, _ = load_clip(model_name, choose_device("cpu"), model_dir)
    model = model.float().eval()
    resolution = model.visual.input_resolution
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, resolution, resolution, generator=generator)
    tokens = torch.randint(1, 49000, (3, 77), generator=generator)
    for row, end in enumerate((5, 20, 40)):  # end tokens at different places, padding after them
        tokens[row, end], tokens[row, end + 1 :] = 49407, 0
    print(f"exporting {model_name} to ONNX in {onnx_dir}")
    _export(ImageEncoder(model), model.encode_image, pixels, "pixels", os.path.join(onnx_dir, VISUAL_FILE))
    _export(TextEncoder(model), model.encode_text, tokens, "tokens", os.path.join(onnx_dir, TEXTUAL_FILE))
    with atomic_path(os.path.join(onnx_dir, MODEL_RECORD)) as tmp, open(tmp, "w") as f:
        json.dump({"model": model_fingerprint(model_name)}, f)


def _export(module: torch.nn.Module, reference, example: torch.Tensor, input_name: str, path: str) -> None:
    """Export module to path; keep it only if onnxruntime matches reference (the model's own encode_*)."""
    axes = {0: "batch", 1: "length"} if input_name == "tokens" else {0: "batch"}
    with atomic_path(path) as tmp, torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic, expected here
        torch.onnx.export(module, (example,), tmp, input_names=[input_name], output_names=["embedding"],
                          dynamic_axes={input_name: axes}, opset_version=17, dynamo=False)
        expected = reference(example).numpy()
        inputs = [example]
        if input_name == "tokens":  # and the same rows cut after their longest end token
            inputs.append(example[:, : int(example.argmax(dim=-1).max()) + 1])
        session = ort.InferenceSession(tmp, providers=PROVIDERS)  # not start_session: it would save a graph of tmp
        for given in inputs:
            try:
                got = session.run(None, {input_name: given.numpy()})[0]
            except Exception as error:  # onnxruntime raises its own classes
                raise RuntimeError(f"ONNX export {path} fails at input shape {tuple(given.shape)}: {error}") from None
            cosine = np.sum(expected * got, axis=1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(got, axis=1)
            if cosine.min() < MIN_COSINE:
                raise RuntimeError(f"ONNX export {path} disagrees with torch at input shape {tuple(given.shape)} "
                                   f"(cosine {cosine.min():.6f}); not kept")
