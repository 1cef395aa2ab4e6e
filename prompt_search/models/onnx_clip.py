"""Encode queries with the ONNX CLIP models on the CPU: onnxruntime and numpy, no torch.

Two files are derived from each export, beside it, on first use:
  NAME.opt.onnx   the graph as onnxruntime optimised it, so that later processes start without optimising again
  NAME.int8.onnx  its dynamically quantised twin, used when QUANTIZE_INT8 is on
Each has a record (NAME.opt.json, NAME.int8.json) naming the file it was made from, and this
onnxruntime and CPU: an optimised graph may hold kernels picked for the CPU it was made on (NCHWc
layouts), so a derived file whose record does not match is made again.
"""

import hashlib
import json
import logging
import os
import platform

import numpy as np
import onnxruntime as ort

from prompt_search.models.names import model_fingerprint
from prompt_search.models.tokenizer import TextSpec
from prompt_search.pixels import PixelSpec
from prompt_search.storage import atomic_path

VISUAL_FILE = "visual.onnx"
TEXTUAL_FILE = "textual.onnx"
MODEL_RECORD = "model.json"  # which model the .onnx files were exported from, and how it reads text and images
PROVIDERS = ["CPUExecutionProvider"]


def is_current(onnx_dir: str, model_name: str) -> bool:
    """Whether onnx_dir holds both models, exported from this model."""
    files = [os.path.join(onnx_dir, name) for name in (VISUAL_FILE, TEXTUAL_FILE, MODEL_RECORD)]
    if not all(os.path.exists(path) for path in files):
        return False
    with open(files[-1]) as f:
        return json.load(f).get("model") == model_fingerprint(model_name)


def query_specs(onnx_dir: str) -> tuple[TextSpec, PixelSpec]:
    """How the exported model reads prompts and images; OpenAI CLIP's when the record predates OpenCLIP models."""
    with open(os.path.join(onnx_dir, MODEL_RECORD)) as f:
        record = json.load(f)
    text, pixels = record.get("text", {}), record.get("pixels", {})
    return (TextSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in text.items()}),
            PixelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in pixels.items()}))


def model_path(onnx_dir: str, name: str, int8: bool = False) -> str:
    """The model file to query: onnx_dir/name, or its int8 twin when int8 (made on first use)."""
    path = os.path.join(onnx_dir, name)
    return int8_model(path) if int8 else path


def start_session(path: str, threads: int = 0) -> ort.InferenceSession:
    """A CPU session on path's optimised graph, optimised and saved beside path the first time.

    threads=0 lets onnxruntime run one thread per physical core.
    """
    optimized = _derived_path(path, "opt")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle threads sleep instead of spinning: on a 2-core machine that other jobs keep busy, spinning
    # threads take turns from the working ones (median queries 13-15% slower in benchmarks/RESULTS.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if _is_made_from(optimized, path):
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimised already
        return ort.InferenceSession(optimized, options, providers=PROVIDERS)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # no warning that the saved graph suits this CPU only: the record sees to that
    with atomic_path(optimized) as tmp:
        options.optimized_model_filepath = tmp
        session = ort.InferenceSession(path, options, providers=PROVIDERS)
    _record(optimized, path)
    return session


def int8_model(path: str) -> str:
    """path's int8 twin (dynamic quantisation), made beside it on first use and again whenever path changes."""
    int8 = _derived_path(path, "int8")
    if _is_made_from(int8, path):
        return int8
    from onnx import TensorProto  # the onnx package is needed only for int8
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its advice to pre-process first, whose shape inference fails on CLIP
    try:
        with atomic_path(int8) as tmp:
            # 7-bit weights: without VNNI, onnxruntime's u8 x s8 kernel saturates on full-range int8 weights
            quantize_dynamic(path, tmp, weight_type=QuantType.QInt8, reduce_range=True,
                             extra_options={"DefaultTensorType": TensorProto.FLOAT})  # behind contrib ops' outputs
    finally:
        logging.disable(logging.NOTSET)
    _record(int8, path)
    return int8


def _derived_path(path: str, kind: str) -> str:
    return f"{path.removesuffix('.onnx')}.{kind}.onnx"


def _record_path(derived: str) -> str:
    return derived.removesuffix(".onnx") + ".json"


def _runtime() -> str:
    """This onnxruntime and CPU (architecture and instruction-set flags): what an optimised graph depends on."""
    flags = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), flags)
    return f"onnxruntime {ort.__version__} {platform.machine()} {hashlib.sha256(flags.encode()).hexdigest()[:16]}"


def _is_made_from(derived: str, source: str) -> bool:
    try:
        with open(_record_path(derived)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    return os.path.exists(derived) and record == {"source": model_fingerprint(source), "runtime": _runtime()}


def _record(derived: str, source: str) -> None:
    with atomic_path(_record_path(derived)) as tmp, open(tmp, "w") as f:
        json.dump({"source": model_fingerprint(source), "runtime": _runtime()}, f)


def normalize(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def encode_text(session: ort.InferenceSession, tokens: np.ndarray) -> np.ndarray:
    """L2-normalised text embeddings of token rows (any length up to 77)."""
    return normalize(session.run(None, {"tokens": tokens})[0])


def encode_image(session: ort.InferenceSession, pixels: np.ndarray) -> np.ndarray:
    """L2-normalised image embeddings of a batch of preprocessed images (N x 3 x 224 x 224)."""
    return normalize(session.run(None, {"pixels": pixels})[0])
