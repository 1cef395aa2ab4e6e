"""Issue 6's fast CPU queries, on a tiny random CLIP: the query script without torch, token rows cut
after the end token, CLIP's tokenizer and preprocess without torch, the saved optimised graphs and
the int8 models. Their speed on the full-size model is benchmarks/bench_query.py's business."""

import csv
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import clip
import numpy as np
import onnxruntime as ort
import pytest
import torch
from clip.clip import _transform
from clip.simple_tokenizer import SimpleTokenizer
from conftest import REPO, make_image
from scaffolding import index_vectors

from prompt_search.models.onnx_clip import (
    TEXTUAL_FILE,
    VISUAL_FILE,
    encode_image,
    encode_text,
    int8_model,
    start_session,
)
from prompt_search.models.onnx_export import export_onnx
from prompt_search.models.openai_clip import load_clip
from prompt_search.models.tokenizer import CONTEXT_LENGTH, tokenize
from prompt_search.pixels import open_rgb, to_pixels

MIN_TRIM_COSINE = 0.99999  # cut rows against 77-token rows: the same sums, in another order
MIN_INT8_COSINE = 0.98  # int8 against fp32, tiny model; measured worst: text 0.992 (of 998 prompts), image 0.9997
# (size, mode, file name): query images come in every size and mode; open_rgb makes them RGB
IMAGES = [((300, 200), "RGB", "a.png"), ((200, 300), "RGBA", "b.png"), ((640, 480), "P", "c.png"),
          ((224, 224), "L", "d.png"), ((500, 333), "CMYK", "e.jpg"), ((123, 457), "I;16", "f.png"),
          ((50, 80), "LA", "g.png"), ((1024, 17), "1", "h.png"), ((225, 224), "RGB", "i.webp")]
# Run a script with torch, torchvision and clip made uninstalled: argv is the script and its arguments.
WITHOUT_TORCH = """
import runpy, sys

class Uninstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision", "clip"):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)

sys.meta_path.insert(0, Uninstalled())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
print("torch imported:", "torch" in sys.modules)
"""


# Words of prompts as people type them: scripts, emoji, entities, weights, mojibake, and CLIP's own special tokens in
# any case, alone or glued to words (clip.tokenize maps them to 49406 and 49407).
WORDS = ["a", "blue", "robot", "on", "red", "background", "portrait", "of", "kangaroo", "trending", "artstation", "8k",
         "octane", "render,", "by", "Greg", "Rutkowski", "CORGI", "astronaut's", "isn't", "we'll", "café", "naïve",
         "東京の夜景", "Москва", "🤖", "🚀🌕", "&amp;", "&lt;b&gt;", "--ar", "16:9", "1920x1080", "(((masterpiece)))",
         "[cyberpunk]", "{neon}", "don’t", "ﬁne", "Ã©tÃ©", "x" * 40, "\n", "\t", "  ",
         "<|startoftext|>", "<|endoftext|>", "<|EndOfText|>", "<|STARTOFTEXT|>", "cat<|endoftext|>dog",
         "<|startoftext|>glued", "glued<|EndOfText|>", "<|endoftext", "< |endoftext|>"]


def generated_prompts(count: int = 400, seed: int = 0) -> list[str]:
    """Prompts from 1 word to past CLIP's 77 tokens, the special tokens among them; the first is a plain one."""
    rng = random.Random(seed)
    prompts = ["a corgi astronaut on the moon", "", " ", "<|endoftext|>", "<|startoftext|>", "<|EndOfText|>",
               "a<|endoftext|>b", "<|startoftext|>" * 3, "a photo <|endoftext|> of a cat " * 30]
    while len(prompts) < count:  # one in 40 past 77 tokens, as in 1k.csv (3.4%); most batches of 16 then have none
        words = 90 if len(prompts) % 40 == 0 else rng.choice([1, 2, 3, 5, 8, 13])
        prompts.append(" ".join(rng.choices(WORDS, k=words)))
    return prompts


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return generated_prompts()


@pytest.fixture(scope="module")
def prompts_1k(csv_1k: Path) -> list[str]:
    """Every prompt of the real 1k.csv, or a skip."""
    with open(csv_1k, newline="", encoding="utf-8") as f:
        return [row["prompt"] for row in csv.DictReader(f)]


# The generated prompts always; the real ones when 1k.csv can be had.
BOTH_PROMPT_SETS = pytest.mark.parametrize("prompt_set", ["prompts", "prompts_1k"])


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_clip: str, prompts: list[str]) -> Path:
    """A folder with out/onnx exported from the tiny CLIP, and out/knn_indices over the prompts and a few images."""
    work = tmp_path_factory.mktemp("fast_query")
    onnx_dir = work / "out" / "onnx"
    export_onnx(tiny_clip, str(work), str(onnx_dir))
    texts = encode_text(start_session(str(onnx_dir / TEXTUAL_FILE)), tokenize(prompts)[0])
    images = [make_image(work / "images" / name, size, "RGB", seed) for seed, (size, _, name) in enumerate(IMAGES)]
    pixels = np.stack([to_pixels(open_rgb(str(path))) for path in images])
    pictures = encode_image(start_session(str(onnx_dir / VISUAL_FILE)), pixels)
    index_vectors(str(work / "out"), "textual", texts, [f"prompt-{i}" for i in range(len(prompts))], tiny_clip)
    index_vectors(str(work / "out"), "visual", pictures, [path.name for path in images], tiny_clip)
    return work


def query_without_torch(work: Path, tiny_clip: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    command = [sys.executable, "-c", WITHOUT_TORCH, str(REPO / "test_visual_knn_index.py"), "--OUT_DIR=out",
               f"--MODEL={tiny_clip}", "--COMPARE_WITH_TORCH=False", *args]
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)


def first_hit(stdout: str, title: str) -> tuple[float, str]:
    """(score, id) of the first result under the section whose title starts with title."""
    section = stdout.split(title, 1)[1]
    score, hit_id = re.search(r"^\s+1\s+([\d.]+)\s+(\S+)", section, re.MULTILINE).groups()
    return float(score), hit_id


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_query_script_runs_without_torch(work: Path, tiny_clip: str, prompts: list[str]):
    k = next(i for i, p in enumerate(prompts) if prompts.count(p) == 1 and not tokenize([p])[1][0])
    result = query_without_torch(work, tiny_clip, f"--INPUT_PROMPT={prompts[k]}", "--INPUT_IMG_PATH=images/c.png")
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout
    # cut to its end token, the prompt finds its own 77-token embedding; the image finds itself
    assert first_hit(result.stdout, "SIMILAR PROMPTS TO THE TEXT") == (1.0, f"prompt-{k}")
    assert first_hit(result.stdout, "SIMILAR IMAGES TO THE IMAGE") == (1.0, "c.png")


def test_hidden_torch_cannot_be_imported(work: Path, tiny_clip: str):
    """The check above means something: the same run, asked to compare with torch, finds none and says so."""
    result = query_without_torch(work, tiny_clip, "--INPUT_IMG_PATH=images/c.png", "--COMPARE_WITH_TORCH=True")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "no comparison with torch CLIP: No module named 'torch' (hidden by the test)" in result.stdout


def test_int8_query_script_runs_without_torch(work: Path, tiny_clip: str):
    result = query_without_torch(work, tiny_clip, "--INPUT_PROMPT=a blue robot", "--INPUT_IMG_PATH=images/a.png",
                                 "--QUANTIZE_INT8=True", "--QUERY_THREADS=1")
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout
    assert first_hit(result.stdout, "SIMILAR IMAGES TO THE IMAGE")[1] == "a.png"
    assert all((work / "out" / "onnx" / f"{name}.int8.onnx").exists() for name in ("textual", "visual"))


@BOTH_PROMPT_SETS
def test_tokenizer_equals_clip_tokenize_on_every_prompt(request, prompt_set: str):
    prompts = request.getfixturevalue(prompt_set)
    tokens, truncated = tokenize(prompts, trim=False)
    assert np.array_equal(tokens, clip.tokenize(prompts, truncate=True).numpy())
    clip_bpe = SimpleTokenizer()
    assert truncated == [len(clip_bpe.encode(p)) + 2 > CONTEXT_LENGTH for p in prompts]


@BOTH_PROMPT_SETS
def test_rows_cut_after_the_end_token_give_the_77_token_embedding(request, work: Path, prompt_set: str):
    """Each prompt alone, cut as a query cuts it, through the saved optimised graph; against the plain export."""
    prompts = request.getfixturevalue(prompt_set)
    path = str(work / "out" / "onnx" / TEXTUAL_FILE)
    full = encode_text(ort.InferenceSession(path, providers=["CPUExecutionProvider"]), tokenize(prompts, trim=False)[0])
    session = start_session(path)
    cut = np.concatenate([encode_text(session, tokenize([prompt])[0]) for prompt in prompts])
    assert cosines(cut, full).min() >= MIN_TRIM_COSINE


@BOTH_PROMPT_SETS
def test_text_graph_equals_torch_encode_text_on_every_prompt(request, work: Path, tiny_clip: str, prompt_set: str):
    """The ONNX text graph, written out by hand, against the model's own encode_text at 77 tokens: every
    prompt, in batches of 16 cut after each batch's longest end token, so that shorter rows carry padding."""
    prompts = request.getfixturevalue(prompt_set)
    model, _ = load_clip(tiny_clip, "cpu", str(work))
    with torch.inference_mode():
        expected = model.float().encode_text(clip.tokenize(prompts, truncate=True)).numpy()
    session = start_session(str(work / "out" / "onnx" / TEXTUAL_FILE))
    batches = [tokenize(prompts[i : i + 16])[0] for i in range(0, len(prompts), 16)]
    assert sum(batch.shape[1] < CONTEXT_LENGTH for batch in batches) > len(batches) / 2  # most were cut
    got = np.concatenate([encode_text(session, batch) for batch in batches])
    assert cosines(got, expected).min() >= MIN_TRIM_COSINE


@pytest.mark.parametrize(("size", "mode", "name"), IMAGES)
def test_to_pixels_equals_clip_preprocess(tmp_path: Path, size: tuple[int, int], mode: str, name: str):
    image = open_rgb(str(make_image(tmp_path / name, size, mode, seed=3)))
    assert np.array_equal(to_pixels(image), _transform(224)(image).numpy())


def test_int8_models_stay_close_to_fp32(work: Path, prompts: list[str]):
    onnx_dir = work / "out" / "onnx"
    tokens = tokenize(prompts)[0]
    pixels = np.stack([to_pixels(open_rgb(str(path))) for path in sorted((work / "images").iterdir())])
    for name, encode, given in ((TEXTUAL_FILE, encode_text, tokens), (VISUAL_FILE, encode_image, pixels)):
        fp32 = encode(start_session(str(onnx_dir / name)), given)
        int8 = encode(start_session(int8_model(str(onnx_dir / name))), given)
        assert cosines(int8, fp32).min() > MIN_INT8_COSINE, name


@pytest.mark.parametrize("kind", ["opt", "int8"])
def test_derived_models_are_reused_and_remade_when_the_export_changes(work: Path, tmp_path: Path, kind: str):
    source = tmp_path / TEXTUAL_FILE
    shutil.copyfile(work / "out" / "onnx" / TEXTUAL_FILE, source)
    derived = tmp_path / f"textual.{kind}.onnx"
    make = start_session if kind == "opt" else int8_model
    make(str(source))
    made = derived.stat()
    make(str(source))
    assert derived.stat().st_ino == made.st_ino  # reused
    os.utime(source, ns=(made.st_mtime_ns + 10**9,) * 2)  # as a new export would
    make(str(source))
    assert derived.stat().st_ino != made.st_ino  # made again (atomically: a new file replaced it)
