"""Issue 6: how fast a query runs on the CPU, batch 1, with a full-size ViT-B/32 of random weights
(speed does not depend on the values), against the reference's two ways measured in the same run:
torch CLIP ("regular CLIP") and a fixed 77-token fp32 ONNX text export ("ONNX CLIP").

    PROMPT_SEARCH_DATA=folder/with/1k.csv/and/prompt-search.png .venv/bin/python benchmarks/bench_query.py

Latencies are measured in one process, the variants called in turns (each call after a short pause)
so that a noisy machine slows them alike; each figure is the median (and the minimum) over many calls.
Cold starts and resident memory are whole query processes. Prints a markdown report. Takes about
8 to 10 minutes on 2 cores.
"""

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from the repository root
sys.path.insert(0, str(REPO / "tests"))  # scaffolding.py: random-weight models, the real data files
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import clip  # noqa: E402
import faiss  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402
from scaffolding import data_file_from_env, index_vectors, save_random_clip  # noqa: E402

import config  # noqa: E402
from prompt_search.errors import UserError  # noqa: E402
from prompt_search.models.onnx_clip import (  # noqa: E402
    PROVIDERS,
    TEXTUAL_FILE,
    VISUAL_FILE,
    encode_image,
    encode_text,
    int8_model,
    start_session,
)
from prompt_search.models.onnx_export import export_onnx  # noqa: E402
from prompt_search.models.openai_clip import load_clip  # noqa: E402
from prompt_search.models.tokenizer import tokenize  # noqa: E402
from prompt_search.pixels import open_rgb, to_pixels  # noqa: E402

BASELINE_FILE = "textual77.onnx"  # the reference's ONNX CLIP text model: 77 tokens, always
TRACED_FILE = "textual_traced.onnx"  # the cut text encoder as torch.onnx.export made it, before text_graph
TEXT_ROUNDS = 40  # calls of each text variant per length and thread count, unless RACE_SECONDS run out first
IMAGE_ROUNDS = 20  # calls of each image variant per thread count, likewise
MIN_ROUNDS = 8  # calls of each variant however long they take
RACE_SECONDS = 25  # keeps the whole run near 10 minutes when other jobs slow the machine down
PAUSE_SECONDS = 0.02  # before each timed call, as between real queries: the previous variant's threads go idle
SEARCH_ROUNDS = 200
THREAD_COUNTS = (0, 1)  # 0 = one per physical core (both libraries' default); 1 for a machine other jobs keep busy
QUALITY_IMAGES = 64  # crops of the real image, for int8 against fp32
RANDOM_GALLERY = 100_000  # random vectors in the larger search index
MIN_EXACT_COSINE = 0.99999  # cut rows against 77 tokens, or the exactness claim fails
TORCH_THREADS = torch.get_num_threads()  # torch's default: one per physical core


class FixedText(torch.nn.Module):
    """The reference's ONNX CLIP text model: model.encode_text traced at 77 tokens."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


class TracedText(torch.nn.Module):
    """The text encoder as torch.onnx.export traces it with a dynamic length: what text_graph replaced."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.token_embedding(tokens) + m.positional_embedding[: tokens.shape[1]]
        for block in m.transformer.resblocks:
            attn = block.attn
            heads = [part.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)
                     for part in F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)]
            x = x + attn.out_proj(F.scaled_dot_product_attention(*heads, is_causal=True).transpose(1, 2).flatten(2))
            x = x + block.mlp(block.ln_2(x))
        x = m.ln_final(x)
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ m.text_projection


def export_traced(model: torch.nn.Module, path: str) -> None:
    tokens = clip.tokenize(["a photo of a cat"] * 2)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TracedText(model), (tokens,), path, input_names=["tokens"], output_names=["embedding"],
                          dynamic_axes={"tokens": {0: "batch", 1: "length"}}, opset_version=17, dynamo=False)


def export_baseline(model: torch.nn.Module, path: str) -> None:
    tokens = clip.tokenize(["a photo of a cat"] * 2)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings, as in the reference
        torch.onnx.export(FixedText(model), (tokens,), path, input_names=["tokens"], output_names=["embedding"],
                          dynamic_axes={"tokens": {0: "batch"}}, opset_version=17, dynamo=False)


def kernel_speed(work: Path, int8: bool, m: int = 1024, k: int = 2048, n: int = 2048) -> float:
    """Giga-operations per second of onnxruntime's MatMul on one large m x k x n product, 1 thread."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [weight])
    path = str(work / "matmul.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    session = start_session(int8_model(path) if int8 else path, threads=1)
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    seconds = race({"matmul": lambda: session.run(None, {"x": x})}, 10)["matmul"] / 1000
    return 2 * m * k * n / float(np.median(seconds)) / 1e9


def race(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, np.ndarray]:
    """Milliseconds per call of each variant, called in turns after one warm-up call each."""
    for call in variants.values():
        call()
    times = {name: [] for name in variants}
    deadline = time.perf_counter() + RACE_SECONDS
    for done in range(rounds):
        if done >= MIN_ROUNDS and time.perf_counter() > deadline:
            break
        for name, call in variants.items():
            time.sleep(PAUSE_SECONDS)  # torch's OpenMP threads spin a while after a call, taking the next one's cores
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: np.array(spent) for name, spent in times.items()}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def top10_overlap(index: faiss.Index, expected: np.ndarray, got: np.ndarray) -> float:
    """Mean share of the top 10 of `expected` queries that `got` queries also find."""
    _, want = index.search(expected.astype(np.float32), 10)
    _, found = index.search(got.astype(np.float32), 10)
    return float(np.mean([len(set(w) & set(f)) / 10 for w, f in zip(want, found, strict=True)]))


def read_prompts(csv_file: str) -> list[str]:
    with open(csv_file, newline="", encoding="utf-8") as f:
        return [row["prompt"] for row in csv.DictReader(f)]


def token_lengths(prompts: list[str]) -> np.ndarray:
    """Tokens per prompt, start and end tokens included, at most 77: what a cut row holds."""
    return np.array([tokenize([prompt])[0].shape[1] for prompt in prompts])


def typical_prompts(prompts: list[str], lengths: np.ndarray) -> dict[str, str]:
    """A real prompt at the 10th, 50th and 90th percentile of token lengths."""
    picks = {}
    for label, q in (("short (p10)", 10), ("median", 50), ("long (p90)", 90)):
        length = np.percentile(lengths, q, method="nearest")
        picks[label] = prompts[int(np.flatnonzero(lengths == length)[0])]
    return picks


def crops(image: Image.Image, count: int) -> list[Image.Image]:
    """Varied views of one real image: random boxes, some mirrored, turned or grey."""
    rng = np.random.default_rng(0)
    views = []
    for i in range(count):
        w, h = (int(side * rng.uniform(0.3, 1.0)) for side in image.size)
        left, top = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
        view = image.crop((left, top, left + w, top + h))
        view = [view, ImageOps.mirror(view), view.rotate(90, expand=True), ImageOps.grayscale(view)][i % 4]
        views.append(view.convert("RGB"))
    return views


def ms(times: np.ndarray, digits: int = 1) -> str:
    return f"{np.median(times):.{digits}f} ({times.min():.{digits}f})"


def ratio(baseline: np.ndarray, times: np.ndarray) -> str:
    return f"{np.median(baseline) / np.median(times):.2f}x ({baseline.min() / times.min():.2f}x)"


class Bench:
    """The models and sessions every measurement shares; each measurement prints its part of the report."""

    def __init__(self, work: Path):
        self.work = work
        self.onnx_dir = work / "out" / "onnx"
        self.checkpoint = str(work / "vit-b-32-random.pt")
        self.paths: dict[str, str] = {}  # model name (":int8" for the int8 twin) to file
        self.sessions: dict[tuple[str, int], ort.InferenceSession] = {}
        self.baseline_ms: dict[int, float] = {}  # threads to the 77-token baseline's median over the prompts

    @staticmethod
    def say(line: str = "") -> None:
        print(line, flush=True)

    def build(self) -> None:
        start = time.perf_counter()
        save_random_clip(self.checkpoint, full_size=True)
        export_onnx(self.checkpoint, str(self.work), str(self.onnx_dir))
        self.model, self.preprocess = load_clip(self.checkpoint, "cpu", str(self.work))
        self.model = self.model.float().eval()
        export_baseline(self.model, str(self.onnx_dir / BASELINE_FILE))
        export_traced(self.model, str(self.onnx_dir / TRACED_FILE))
        self.paths = {name: str(self.onnx_dir / name) for name in (TEXTUAL_FILE, VISUAL_FILE, TRACED_FILE)}
        self.paths.update({f"{name}:int8": int8_model(self.paths[name]) for name in (TEXTUAL_FILE, VISUAL_FILE)})
        print(f"(models built and exported in {time.perf_counter() - start:.0f} s)", flush=True)

    def session(self, name: str, threads: int) -> ort.InferenceSession:
        """One session per model and thread count, kept for the whole run."""
        if (name, threads) not in self.sessions:
            if name == BASELINE_FILE:  # as the reference opens it: default options
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                path = self.onnx_dir / name
                self.sessions[name, threads] = ort.InferenceSession(str(path), options, providers=PROVIDERS)
            else:
                self.sessions[name, threads] = start_session(self.paths[name], threads)
        return self.sessions[name, threads]

    def text_latency(self, picks: dict[str, str], threads: int) -> None:
        torch.set_num_threads(threads or TORCH_THREADS)
        self.say(f"\nText query, {threads or 'physical-core'} thread(s): ms, median (min); "
                 "speed-up against the 77-token fp32 ONNX baseline, median (min)\n")
        self.say("| prompt | tokens | calls | torch CLIP | ONNX 77 tokens | cut fp32 | cut int8 | fp32 speed-up | "
                 "int8 speed-up | torch / cut fp32 |")
        self.say("|---|---|---|---|---|---|---|---|---|---|")
        baseline = self.session(BASELINE_FILE, threads)
        fp32, int8 = self.session(TEXTUAL_FILE, threads), self.session(f"{TEXTUAL_FILE}:int8", threads)
        baseline_times = []
        for label, prompt in picks.items():
            variants = {
                "torch": lambda p=prompt: self._torch_text(p),
                "onnx77": lambda p=prompt: encode_text(baseline, tokenize([p], trim=False)[0]),
                "fp32": lambda p=prompt: encode_text(fp32, tokenize([p])[0]),
                "int8": lambda p=prompt: encode_text(int8, tokenize([p])[0]),
            }
            t = race(variants, TEXT_ROUNDS)
            baseline_times.append(t["onnx77"])
            self.say(f"| {label} | {tokenize([prompt])[0].shape[1]} | {len(t['torch'])} | {ms(t['torch'])} | "
                     f"{ms(t['onnx77'])} | {ms(t['fp32'])} | {ms(t['int8'])} | {ratio(t['onnx77'], t['fp32'])} | "
                     f"{ratio(t['onnx77'], t['int8'])} | {ratio(t['torch'], t['fp32'])} |")
        self.baseline_ms[threads] = float(np.median(np.concatenate(baseline_times)))

    def ceiling(self, picks: dict[str, str]) -> None:
        """The most an exact text encoder could gain on this CPU, 1 thread: its matrix products alone, at the
        speed onnxruntime's kernels reach on one large product, against the 77-token baseline measured above."""
        blocks = self.model.transformer
        weights = sum(p.numel() for name, p in blocks.named_parameters() if name.endswith("weight") and p.dim() == 2)
        peak = {kind: kernel_speed(self.work, int8=kind == "int8") for kind in ("fp32", "int8")}
        baseline = self.baseline_ms[1]
        self.say(f"\nCeiling, 1 thread: onnxruntime's MatMul on one 1024x2048x2048 product runs at "
                 f"{peak['fp32']:.0f} GFLOP/s in fp32 and {peak['int8']:.0f} GOP/s in int8 (dynamic quantisation). "
                 f"A query of n tokens needs at least 2 x n x {weights / 1e6:.1f}M operations in the transformer's "
                 f"matrix products; at those speeds, against the 77-token baseline's {baseline:.1f} ms:\n")
        self.say("| prompt | tokens | floor fp32 ms | most fp32 speed-up | floor int8 ms | most int8 speed-up |")
        self.say("|---|---|---|---|---|---|")
        for label, prompt in picks.items():
            n = tokenize([prompt])[0].shape[1]
            floor = {kind: 2 * n * weights / speed / 1e6 for kind, speed in peak.items()}
            self.say(f"| {label} | {n} | {floor['fp32']:.1f} | {baseline / floor['fp32']:.2f}x | "
                     f"{floor['int8']:.1f} | {baseline / floor['int8']:.2f}x |")

    def _torch_text(self, prompt: str) -> np.ndarray:
        with torch.inference_mode():
            return self.model.encode_text(clip.tokenize([prompt], truncate=True)).numpy()

    def image_latency(self, image: Image.Image, threads: int) -> None:
        torch.set_num_threads(threads or TORCH_THREADS)
        fp32, int8 = self.session(VISUAL_FILE, threads), self.session(f"{VISUAL_FILE}:int8", threads)

        def torch_image():
            with torch.inference_mode():
                return self.model.encode_image(self.preprocess(image)[None]).numpy()

        t = race({"torch": torch_image,
                  "fp32": lambda: encode_image(fp32, to_pixels(image)[None]),
                  "int8": lambda: encode_image(int8, to_pixels(image)[None])}, IMAGE_ROUNDS)
        self.say(f"\nImage query ({image.width}x{image.height} PNG, preprocessing included), "
                 f"{threads or 'physical-core'} thread(s): ms, median (min)\n")
        self.say("| calls | torch CLIP | ONNX fp32 | ONNX int8 | fp32 speed-up vs torch | int8 speed-up vs torch |")
        self.say("|---|---|---|---|---|---|")
        self.say(f"| {len(t['torch'])} | {ms(t['torch'])} | {ms(t['fp32'])} | {ms(t['int8'])} | "
                 f"{ratio(t['torch'], t['fp32'])} | {ratio(t['torch'], t['int8'])} |")

    def graph_against_trace(self, picks: dict[str, str], threads: int) -> None:
        """text_graph's export against torch.onnx.export's trace of the same cut encoder, both fp32."""
        graph, traced = self.session(TEXTUAL_FILE, threads), self.session(TRACED_FILE, threads)
        self.say(f"\nText graph against the traced export, cut fp32, {threads or 'physical-core'} thread(s): "
                 "ms, median (min)\n")
        self.say("| prompt | tokens | traced (torch.onnx.export) | text_graph | speed-up |")
        self.say("|---|---|---|---|---|")
        for label, prompt in picks.items():
            t = race({"traced": lambda p=prompt: encode_text(traced, tokenize([p])[0]),
                      "graph": lambda p=prompt: encode_text(graph, tokenize([p])[0])}, TEXT_ROUNDS)
            self.say(f"| {label} | {tokenize([prompt])[0].shape[1]} | {ms(t['traced'])} | {ms(t['graph'])} | "
                     f"{ratio(t['traced'], t['graph'])} |")

    def spinning(self, prompt: str, image: Image.Image) -> None:
        """start_session's idle threads sleep; onnxruntime's default keeps them spinning for the next call."""
        spinning = {name: ort.InferenceSession(self.paths[name], providers=PROVIDERS)
                    for name in (TEXTUAL_FILE, VISUAL_FILE)}
        tokens, pixels = tokenize([prompt])[0], to_pixels(image)[None]
        t = race({"text sleep": lambda: encode_text(self.session(TEXTUAL_FILE, 0), tokens),
                  "text spin": lambda: encode_text(spinning[TEXTUAL_FILE], tokens),
                  "image sleep": lambda: encode_image(self.session(VISUAL_FILE, 0), pixels),
                  "image spin": lambda: encode_image(spinning[VISUAL_FILE], pixels)}, IMAGE_ROUNDS)
        self.say("\nIdle onnxruntime threads, physical-core threads, fp32: ms, median (min)\n")
        self.say("| query | sleep (start_session) | spin (onnxruntime's default) |")
        self.say("|---|---|---|")
        for kind in ("text", "image"):
            self.say(f"| {kind} | {ms(t[f'{kind} sleep'])} | {ms(t[f'{kind} spin'])} |")

    def every_prompt(self, prompts: list[str]) -> np.ndarray:
        """Each 1k.csv prompt as a query: cut fp32 against 77 tokens (exactness), int8 against fp32; timed.

        One thread: the pass is long, and one thread suffers least from other jobs on the machine.
        """
        variants = (("onnx77", self.session(BASELINE_FILE, 1), False), ("fp32", self.session(TEXTUAL_FILE, 1), True),
                    ("int8", self.session(f"{TEXTUAL_FILE}:int8", 1), True))
        times = {name: [] for name, _, _ in variants}
        vectors = {name: [] for name in times}
        for prompt in prompts:
            for name, session, trim in variants:
                start = time.perf_counter()
                vectors[name].append(encode_text(session, tokenize([prompt], trim=trim)[0])[0])
                times[name].append((time.perf_counter() - start) * 1000)
        t = {name: np.array(spent) for name, spent in times.items()}
        v = {name: np.stack(found) for name, found in vectors.items()}
        exact = cosines(v["fp32"], v["onnx77"])
        near = cosines(v["int8"], v["fp32"])
        index = faiss.IndexFlatIP(v["fp32"].shape[1])
        index.add(v["fp32"])
        self.say(f"\nEvery 1k.csv prompt ({len(prompts)}) as a query, 1 thread, batch 1:\n")
        self.say(f"- cut fp32 against the 77-token baseline: cosine min {exact.min():.7f} "
                 f"({'all' if exact.min() >= MIN_EXACT_COSINE else 'NOT all'} >= {MIN_EXACT_COSINE})")
        self.say(f"- total time: 77-token baseline {t['onnx77'].sum() / 1000:.1f} s, cut fp32 "
                 f"{t['fp32'].sum() / 1000:.1f} s ({t['onnx77'].sum() / t['fp32'].sum():.2f}x), cut int8 "
                 f"{t['int8'].sum() / 1000:.1f} s ({t['onnx77'].sum() / t['int8'].sum():.2f}x)")
        self.say(f"- int8 against fp32: cosine min {near.min():.4f}, median {np.median(near):.4f}; top-10 overlap "
                 f"on an index of the {len(prompts)} fp32 prompt embeddings "
                 f"{top10_overlap(index, v['fp32'], v['int8']):.3f}")
        return v["fp32"]

    def image_quality(self, image: Image.Image) -> np.ndarray:
        pixels = np.stack([to_pixels(view) for view in crops(image, QUALITY_IMAGES)])
        fp32 = encode_image(self.session(VISUAL_FILE, 0), pixels)
        int8 = encode_image(self.session(f"{VISUAL_FILE}:int8", 0), pixels)
        near = cosines(int8, fp32)
        index = faiss.IndexFlatIP(fp32.shape[1])
        index.add(fp32)
        self.say(f"- image int8 against fp32 on {QUALITY_IMAGES} crops of the real image: cosine min {near.min():.4f}, "
                 f"median {np.median(near):.4f}; top-10 overlap on an index of their fp32 embeddings "
                 f"{top10_overlap(index, fp32, int8):.3f}")
        return fp32

    def search_latency(self, texts: np.ndarray) -> None:
        rng = np.random.default_rng(0)
        gallery = rng.standard_normal((RANDOM_GALLERY, texts.shape[1])).astype(np.float32)
        gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
        self.say("\nSearch, top 10, flat inner-product index (what autofaiss builds for small sets): "
                 "ms, median (min), one query\n")
        for name, vectors in ((f"{len(texts)} 1k.csv prompt embeddings", texts),
                              (f"{RANDOM_GALLERY} random vectors", gallery)):
            index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(vectors)
            rounds = SEARCH_ROUNDS if len(vectors) < 10_000 else SEARCH_ROUNDS // 10
            t = race({"search": lambda index=index: index.search(texts[:1], 10)}, rounds)["search"]
            self.say(f"- {name}: {ms(t, 3)}")

    def write_indices(self, texts: np.ndarray, pictures: np.ndarray) -> None:
        """Index sets in out/knn_indices, built by step 4 as the query script reads them, for the cold starts."""
        for name, vectors in (("textual", texts), ("visual", pictures)):
            index_vectors(str(self.work / "out"), name, vectors, [f"{name}-{i}" for i in range(len(vectors))],
                          self.checkpoint)

    def cold_starts(self, prompt: str, image_file: str) -> None:
        script = [str(REPO / "test_visual_knn_index.py"), "--OUT_DIR=out",
                  f"--MODEL={self.checkpoint}", f"--MODEL_DIR={self.work}", "--COMPARE_WITH_TORCH=False",
                  f"--INPUT_IMG_PATH={image_file}", f"--INPUT_PROMPT={prompt}"]
        (self.work / "torch_query.py").write_text(TORCH_QUERY)
        torch_query = [str(self.work / "torch_query.py"), self.checkpoint,
                       str(self.work / "out" / "knn_indices" / "textual" / "knn.index"), prompt, image_file]
        for saved in self.onnx_dir.glob("*.opt.*"):  # as after a new export: the first query optimises the graphs
            saved.unlink()
        first, later = cold(script, self.work), cold(script, self.work)
        cold([*script, "--QUANTIZE_INT8=True"], self.work)  # optimises the int8 graphs: a first run, not shown
        int8, reference = cold([*script, "--QUANTIZE_INT8=True"], self.work), cold(torch_query, self.work)
        self.say("\nCold start of a query process (imports, model load, one text and one image query, search), "
                 "and its peak resident memory:\n")
        self.say("| process | wall s | peak RSS MiB |")
        self.say("|---|---|---|")
        for label, (seconds, rss) in (("query script, first run after an export (optimises, saves the graphs)", first),
                                      ("query script, later runs (loads the saved optimised graphs)", later),
                                      ("query script, int8, later runs", int8),
                                      ("torch CLIP query process (the reference's regular CLIP)", reference)):
            self.say(f"| {label} | {seconds:.2f} | {rss:.0f} |")


# Runs the script in argv[1] with its arguments, then reports the process's peak resident memory.
# Measured in the process itself: a child's ru_maxrss starts at its parent's size, kept across exec.
MEASURED = """
import os, runpy, sys
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    with open("/proc/self/status") as f:
        print("peak-rss-kib", next(line.split()[1] for line in f if line.startswith("VmHWM")), file=sys.stderr)
"""

TORCH_QUERY = """
import sys, warnings
warnings.filterwarnings("ignore")
import clip, faiss, torch
from PIL import Image
model, preprocess = clip.load(sys.argv[1], device="cpu", jit=False)
index = faiss.read_index(sys.argv[2])
with torch.inference_mode():
    text = model.encode_text(clip.tokenize([sys.argv[3]], truncate=True)).float()
    image = model.encode_image(preprocess(Image.open(sys.argv[4]))[None]).float()
for vector in (text, image):
    index.search(torch.nn.functional.normalize(vector, dim=-1).numpy(), 5)
"""


def cold(command: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of one Python process running command (a script and its arguments)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", MEASURED, *command], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"{command[0]} failed:\n{result.stderr}")
    return seconds, int(result.stderr.split("peak-rss-kib")[-1]) / 1024


def machine() -> str:
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return (f"{cpu}, {os.cpu_count()} CPUs, onnxruntime {ort.__version__}, torch {torch.__version__}, "
            f"faiss {faiss.__version__}, Python {platform.python_version()}")


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_query_") as tmp:
        # the real files, from $PROMPT_SEARCH_DATA (checked against config.py's sha256s)
        csv_file = data_file_from_env("1k.csv", config.CSV_SHA256, tmp)
        image_file = data_file_from_env("prompt-search.png", config.INPUT_IMG_SHA256, tmp)
        bench = Bench(Path(tmp))
        bench.build()
        prompts = read_prompts(csv_file)
        lengths = token_lengths(prompts)
        picks = typical_prompts(prompts, lengths)
        image = open_rgb(image_file)
        bench.say(f"Machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
        bench.say(f"1k.csv prompt lengths in tokens (start and end included, cut at 77): p10 "
                  f"{np.percentile(lengths, 10):.0f}, median {np.median(lengths):.0f}, mean {lengths.mean():.1f}, "
                  f"p90 {np.percentile(lengths, 90):.0f}; {np.mean(lengths == 77):.1%} fill all 77")
        for threads in THREAD_COUNTS:
            bench.text_latency(picks, threads)
            bench.image_latency(image, threads)
            bench.graph_against_trace(picks, threads)
        bench.ceiling(picks)
        bench.spinning(picks["median"], image)
        texts = bench.every_prompt(prompts)
        pictures = bench.image_quality(image)
        bench.search_latency(texts)
        bench.write_indices(texts, pictures)
        bench.cold_starts(picks["median"], image_file)
        bench.say(f"\nLoad average at the end {os.getloadavg()[0]:.1f}; "
                  f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
                  f"benchmark ran {(time.perf_counter() - began) / 60:.1f} min")


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
