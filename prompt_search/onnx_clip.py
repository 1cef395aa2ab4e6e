"""Encode queries with the ONNX CLIP models on the CPU: onnxruntime and numpy, no torch."""

import json
import os

import numpy as np
import onnxruntime as ort

from prompt_search.files import model_fingerprint

VISUAL_FILE = "visual.onnx"
TEXTUAL_FILE = "textual.onnx"
MODEL_RECORD = "model.json"  # which model the .onnx files were exported from


def is_current(onnx_dir: str, model_name: str) -> bool:
    """Whether onnx_dir holds both models, exported from this model."""
    files = [os.path.join(onnx_dir, name) for name in (VISUAL_FILE, TEXTUAL_FILE, MODEL_RECORD)]
    if not all(os.path.exists(path) for path in files):
        return False
    with open(files[-1]) as f:
        return json.load(f).get("model") == model_fingerprint(model_name)


def start_session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def normalize(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def encode_text(session: ort.InferenceSession, tokens: np.ndarray) -> np.ndarray:
    """L2-normalised text embeddings of token rows (any length up to 77)."""
    return normalize(session.run(None, {"tokens": tokens})[0])


def encode_image(session: ort.InferenceSession, pixels: np.ndarray) -> np.ndarray:
    """L2-normalised image embeddings of a batch of preprocessed images (N x 3 x 224 x 224)."""
    return normalize(session.run(None, {"pixels": pixels})[0])
