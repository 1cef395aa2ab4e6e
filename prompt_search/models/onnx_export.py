"""Export a torch CLIP to visual.onnx and textual.onnx, checked against torch before they are kept.

The text encoder is written out as a small ONNX graph from the model's weights, with a dynamic
sequence length: CLIP's text transformer is causal and reads the end token's position, so feeding
only up to the longest end token gives the 77-token result while doing a fraction of the work.
OpenCLIP's CLIP text transformer is the same architecture, with the same names, its MLP activation
GELU rather than OpenAI's QuickGELU; models/clip.py refuses OpenCLIP text towers that are not causal or
not read at the end token, for which this cut would be wrong.
torch.onnx.export of the same code gave 1,700 nodes, most of them shape arithmetic for the dynamic
length, run on every query; here a block is 12 nodes, with onnxruntime's own causal Attention kernel.
"""

import json
import os
import warnings
from dataclasses import asdict

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper

from prompt_search.models.clip import load
from prompt_search.models.names import model_fingerprint
from prompt_search.models.onnx_clip import MODEL_RECORD, PROVIDERS, TEXTUAL_FILE, VISUAL_FILE
from prompt_search.storage import atomic_path

MIN_COSINE = 0.9999  # onnxruntime against torch on random inputs, or the export is refused
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]  # 17: LayerNormalization


def text_graph(model: torch.nn.Module) -> onnx.ModelProto:
    """model.encode_text as an ONNX graph: int64 tokens (batch x any length up to 77) to embeddings."""
    nodes, weights = [], []

    def weight(name: str, tensor: torch.Tensor) -> str:
        weights.append(numpy_helper.from_array(np.ascontiguousarray(tensor.detach().float().numpy()), name))
        return name

    def op(op_type: str, *inputs: str, output: str = "", domain: str = "", **attributes) -> str:
        output = output or f"{op_type}_{len(nodes)}"
        nodes.append(helper.make_node(op_type, inputs, [output], domain=domain, **attributes))
        return output

    def layer_norm(x: str, norm: torch.nn.LayerNorm, name: str) -> str:
        return op("LayerNormalization", x, weight(f"{name}.weight", norm.weight), weight(f"{name}.bias", norm.bias),
                  axis=-1, epsilon=norm.eps)

    def linear(x: str, layer: torch.nn.Linear, name: str) -> str:
        return op("Add", op("MatMul", x, weight(f"{name}.weight", layer.weight.T)), weight(f"{name}.bias", layer.bias))

    def activation(x: str, layer: torch.nn.Module) -> str:
        if type(layer).__name__ == "QuickGELU":  # OpenAI's x * sigmoid(1.702 * x), in clip and open_clip alike
            return op("QuickGelu", x, domain="com.microsoft", alpha=1.702)
        if isinstance(layer, torch.nn.GELU) and layer.approximate == "none":  # OpenCLIP's own models
            return op("Gelu", x, domain="com.microsoft")
        raise ValueError(f"no ONNX text graph for the activation {layer}")

    for value in (0, 1, 2):
        weights.append(numpy_helper.from_array(np.array([value], dtype=np.int64), f"int{value}"))
    length = op("Slice", op("Shape", "tokens"), "int1", "int2")
    positions = op("Slice", weight("positional_embedding", model.positional_embedding), "int0", length)
    x = op("Add", op("Gather", weight("token_embedding", model.token_embedding.weight), "tokens"), positions)
    for i, block in enumerate(model.transformer.resblocks):
        name, attn = f"resblocks.{i}", block.attn
        heads = op("Attention", layer_norm(x, block.ln_1, f"{name}.ln_1"),
                   weight(f"{name}.attn.in_proj_weight", attn.in_proj_weight.T),
                   weight(f"{name}.attn.in_proj_bias", attn.in_proj_bias),
                   domain="com.microsoft", num_heads=attn.num_heads, unidirectional=1)  # unidirectional: causal
        x = op("Add", x, linear(heads, attn.out_proj, f"{name}.attn.out_proj"))
        hidden = linear(layer_norm(x, block.ln_2, f"{name}.ln_2"), block.mlp.c_fc, f"{name}.mlp.c_fc")
        hidden = activation(hidden, block.mlp.gelu)
        x = op("Add", x, linear(hidden, block.mlp.c_proj, f"{name}.mlp.c_proj"))
    end = op("GatherND", x, op("ArgMax", "tokens", axis=-1, keepdims=1), batch_dims=1)  # the end token: highest id
    op("MatMul", layer_norm(end, model.ln_final, "ln_final"), weight("text_projection", model.text_projection),
       output="embedding")
    graph = helper.make_graph(
        nodes, "clip_text", [helper.make_tensor_value_info("tokens", onnx.TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["batch", model.text_projection.shape[1]])],
        weights)
    return helper.make_model(graph, opset_imports=OPSETS, ir_version=8)


class ImageEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.visual = model.visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)


def export_onnx(model_name: str, model_dir: str, onnx_dir: str) -> None:
    """Export the model to onnx_dir's visual and textual files, and record which model they are and how it
    reads prompts and images (onnx_clip.query_specs)."""
    loaded = load(model_name, "cpu", model_dir)
    model = loaded.model.float().eval()
    resolution, context = loaded.pixels.size, loaded.text.context_length
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, resolution, resolution, generator=generator)
    tokens = torch.randint(1, 49000, (3, context), generator=generator)
    for row, end in enumerate((5, 20, 40)):  # end tokens at different places, padding after them
        tokens[row, end], tokens[row, end + 1 :] = 49407, 0
    print(f"exporting {model_name} to ONNX in {onnx_dir}")
    visual, textual = os.path.join(onnx_dir, VISUAL_FILE), os.path.join(onnx_dir, TEXTUAL_FILE)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # OpenCLIP's image transformer uses batch-first attention, which inference runs as a fused op ONNX has not
    with atomic_path(visual) as tmp, torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic, expected here
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            torch.onnx.export(ImageEncoder(model), (pixels,), tmp, input_names=["pixels"],
                              output_names=["embedding"],
                              dynamic_axes={"pixels": {0: "batch"}}, opset_version=17, dynamo=False)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        _check(tmp, model.encode_image, pixels, "pixels", visual)
    with atomic_path(textual) as tmp, torch.inference_mode():
        onnx.save(text_graph(model), tmp)
        _check(tmp, model.encode_text, tokens, "tokens", textual)
    record = {"model": model_fingerprint(model_name), "text": asdict(loaded.text), "pixels": asdict(loaded.pixels)}
    with atomic_path(os.path.join(onnx_dir, MODEL_RECORD)) as tmp, open(tmp, "w") as f:
        json.dump(record, f)


def _check(tmp: str, reference, example: torch.Tensor, input_name: str, path: str) -> None:
    """Raise unless onnxruntime on tmp matches reference (the model's own encode_*) on example."""
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
