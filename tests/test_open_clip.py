"""Issue 16's OpenCLIP models (MODEL=open_clip:ARCH/PRETRAINED), on a tiny architecture with random weights:
load, embed, the ONNX export against torch, the torch-free tokenizer and preprocess against open_clip's own,
bad names as one line, the model fingerprint, and steps 3 to 5 as scripts."""

import csv
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from conftest import TINY_OPEN_CLIP, make_image, run_script, write_open_clip, write_open_prompts_csv
from open_clip.transform import PreprocessCfg, image_transform_v2
from test_fast_query import IMAGES, cosines, first_hit, generated_prompts, query_without_torch

from prompt_search.errors import UserError
from prompt_search.models.clip import load
from prompt_search.models.names import fingerprint_model, model_fingerprint, model_mismatch
from prompt_search.models.onnx_clip import (
    TEXTUAL_FILE,
    VISUAL_FILE,
    encode_image,
    encode_text,
    int8_model,
    start_session,
)
from prompt_search.models.onnx_export import MIN_COSINE, export_onnx
from prompt_search.models.tokenizer import OPEN_CLIP_SPECIAL_TOKENS, TextSpec, tokenize
from prompt_search.pixels import PixelSpec, open_rgb, to_pixels

OPEN_CLIP_SPEC = TextSpec(OPEN_CLIP_SPECIAL_TOKENS)
# OpenCLIP's spelling of the special tokens, which OpenAI's tokenizer reads as plain text, and the other way round
SPECIAL_PROMPTS = ["<start_of_text>", "<end_of_text>", "a<END_OF_TEXT>b", "<Start_Of_Text>glued", "<end_of_text" * 9,
                   "<|endoftext|>", "cat<|startoftext|>dog", "<end_of_text> " * 80]


@pytest.fixture(scope="module")
def prompts(csv_1k_or_none) -> list[str]:
    return generated_prompts() + SPECIAL_PROMPTS + csv_1k_or_none


@pytest.fixture(scope="module")
def csv_1k_or_none(request) -> list[str]:
    """The real 1k.csv prompts too, when $PROMPT_SEARCH_DATA has them."""
    try:
        path = request.getfixturevalue("csv_1k")
    except pytest.skip.Exception:
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [row["prompt"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_open_clip: str) -> Path:
    onnx_dir = tmp_path_factory.mktemp("open_clip_onnx")
    export_onnx(tiny_open_clip, str(onnx_dir), str(onnx_dir))
    return onnx_dir


def test_tokenizer_equals_open_clip_tokenizer(prompts: list[str]):
    tokens, truncated = tokenize(prompts, trim=False, spec=OPEN_CLIP_SPEC)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    assert np.array_equal(tokens, tokenizer(prompts).numpy())
    assert truncated == [len(tokenizer.encode(p)) + 2 > tokenizer.context_length for p in prompts]


@pytest.mark.parametrize("config", [
    PreprocessCfg(),  # ViT-B-32's: OpenAI's mean and std, bicubic, 224
    PreprocessCfg(size=256),  # ViT-B-32-256's (datacomp_s34b_b86k)
    PreprocessCfg(size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear"),
], ids=["224", "256", "256-bilinear-inception"])
@pytest.mark.parametrize(("size", "mode", "name"), IMAGES)
def test_to_pixels_equals_open_clip_preprocess(tmp_path: Path, config, size, mode, name):
    image = open_rgb(str(make_image(tmp_path / name, size, mode, seed=3)))
    spec = PixelSpec(config.size, config.mean, config.std, config.interpolation)
    assert np.array_equal(to_pixels(image, spec), image_transform_v2(config, is_train=False)(image).numpy())


def test_loaded_model_follows_its_config(tiny_open_clip: str, tmp_path: Path):
    loaded = load(tiny_open_clip, "cpu", str(tmp_path))
    assert loaded.pixels == PixelSpec(size=256) and loaded.text == OPEN_CLIP_SPEC
    assert loaded.dim == TINY_OPEN_CLIP["embed_dim"] and loaded.dtype == torch.float32
    image = open_rgb(str(make_image(tmp_path / "a.png", (300, 200))))
    with torch.inference_mode():
        pictures = loaded.model.encode_image(loaded.preprocess(image)[None])
        texts = loaded.model.encode_text(loaded.tokenize(["a corgi", "a castle"]))
    assert pictures.shape == (1, 32) and texts.shape == (2, 32)


def test_onnx_export_matches_torch(exported: Path, tiny_open_clip: str, prompts: list[str], tmp_path: Path):
    """Every prompt in batches of 16 cut after each batch's longest end token, and the images, through the
    saved optimised graphs with the torch-free tokenizer and preprocess, against open_clip at full length."""
    loaded = load(tiny_open_clip, "cpu", str(tmp_path))
    record = json.loads((exported / "model.json").read_text())
    assert record["pixels"]["size"] == 256 and record["text"]["special_tokens"] == list(OPEN_CLIP_SPECIAL_TOKENS)
    images = [open_rgb(str(make_image(tmp_path / name, size, mode, seed))) for seed, (size, mode, name)
              in enumerate(IMAGES)]
    with torch.inference_mode():
        expected_text = loaded.model.encode_text(loaded.tokenize(prompts)).numpy()
        expected_images = loaded.model.encode_image(torch.stack([loaded.preprocess(i) for i in images])).numpy()
    session = start_session(str(exported / TEXTUAL_FILE))
    batches = [tokenize(prompts[i : i + 16], spec=OPEN_CLIP_SPEC)[0] for i in range(0, len(prompts), 16)]
    got_text = np.concatenate([encode_text(session, batch) for batch in batches])
    assert cosines(got_text, expected_text).min() >= MIN_COSINE
    pixels = np.stack([to_pixels(image, loaded.pixels) for image in images])
    got_images = encode_image(start_session(str(exported / VISUAL_FILE)), pixels)
    assert cosines(got_images, expected_images).min() >= MIN_COSINE
    int8 = encode_text(start_session(int8_model(str(exported / TEXTUAL_FILE))), batches[0])
    assert cosines(int8, got_text[:16]).min() > 0.98  # as test_fast_query's MIN_INT8_COSINE


@pytest.mark.parametrize(("model", "message"), [
    ("open_clip:NoSuchArch/x", "'NoSuchArch' is neither an OpenCLIP architecture"),
    ("open_clip:ViT-B-32/nosuchtag", "'nosuchtag' is neither a pretrained tag of ViT-B-32 (openai, "),
    ("open_clip:ViT-B-32", "'' is neither a pretrained tag of ViT-B-32"),
    ("open_clip:ViT-B-32//data/nothere.pt", "checkpoint file /data/nothere.pt not found"),
    ("open_clip:ViT-B-32/nothere.safetensors", "checkpoint file nothere.safetensors not found"),
    ("open_clip:nothere.json/x.pt", "model config"),
    ("open_clip:ViT-B-16-SigLIP/webli", "is not supported: ViT-B-16-SigLIP's tokenizer is not CLIP's BPE"),
    ("open_clip:coca_ViT-B-32/laion2b_s13b_b90k", "is not supported: coca_ViT-B-32's text tower is not CLIP's"),
])
def test_bad_open_clip_names_are_one_clear_error(tmp_path: Path, model: str, message: str):
    with pytest.raises(UserError) as error:
        load(model, "cpu", str(tmp_path))
    assert message in str(error.value) and "\n" not in str(error.value), error.value


def test_text_tower_that_is_not_causal_is_refused_saying_so(tmp_path: Path):
    config = {**TINY_OPEN_CLIP, "text_cfg": {**TINY_OPEN_CLIP["text_cfg"], "no_causal_mask": True, "pool_type": "last"}}
    model = write_open_clip(tmp_path, "bidirectional", config)
    with pytest.raises(UserError, match="text transformer is not causal and read at the end token"):
        load(model, "cpu", str(tmp_path))


def test_not_a_checkpoint_of_the_architecture_is_one_line(tmp_path: Path, tiny_clip: str):
    with pytest.raises(UserError, match=r"is not a checkpoint of ViT-B-32 \(") as error:
        load(f"open_clip:ViT-B-32/{tiny_clip}", "cpu", str(tmp_path))
    assert "\n" not in str(error.value)


def test_offline_tagged_weights_say_what_to_download_and_where(tmp_path: Path, monkeypatch):
    make_image(tmp_path / "images" / "a.png", (64, 64))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as offline, without waiting for huggingface_hub's retries
    result = run_script("extract_visual_clip_embeddings.py", "--IMG_DIR=images", "--OUT_DIR=out",
                        "--MODEL=open_clip:ViT-B-32/laion2b_s34b_b79k", "--MODEL_DIR=weights", cwd=tmp_path,
                        check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: OpenCLIP weights for ViT-B-32/laion2b_s34b_b79k are not in ")
    assert "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/" in result.stderr
    assert "--MODEL=open_clip:ViT-B-32//path/to/it" in result.stderr


def test_fingerprint_names_architecture_and_pretrained(tiny_open_clip: str):
    assert model_fingerprint("open_clip:ViT-B-32/laion2b_s34b_b79k") == "open_clip:ViT-B-32/laion2b_s34b_b79k"
    names = ["ViT-B/32", "open_clip:ViT-B-32/laion2b_s34b_b79k", "open_clip:ViT-B-32/datacomp_xl_s13b_b90k",
             "open_clip:ViT-B-32-256/datacomp_s34b_b86k", tiny_open_clip]
    assert len({model_fingerprint(name) for name in names}) == len(names)
    config, checkpoint = tiny_open_clip.removeprefix("open_clip:").split(".json/")
    size = Path(checkpoint).stat().st_size
    assert model_fingerprint(tiny_open_clip).startswith(f"open_clip:{config}.json:")  # its files, size and mtime
    assert f"/{checkpoint}:{size}:" in model_fingerprint(tiny_open_clip)


def test_a_mismatch_names_a_model_to_run_with(tmp_path, tiny_open_clip: str):
    """Messages name the model as MODEL takes it, without the size and time a fingerprint holds."""
    recorded = model_fingerprint(tiny_open_clip)
    assert fingerprint_model(recorded) != recorded and model_mismatch(recorded, fingerprint_model(recorded)) == ""
    assert f"run with --MODEL={fingerprint_model(recorded)}, or" in model_mismatch(recorded, "ViT-B/32")
    checkpoint = tmp_path / "clip.pt"
    checkpoint.write_bytes(b"weights")
    recorded = model_fingerprint(str(checkpoint))
    assert model_mismatch(recorded, str(checkpoint)) == ""
    assert model_mismatch(recorded, "ViT-B/32").endswith(f"run with --MODEL={checkpoint}, or recompute them with "
                                                         "MODEL ViT-B/32")
    checkpoint.write_bytes(b"other weights")  # the same path, other weights: naming it again would not help
    assert "before its file changed" in model_mismatch(recorded, str(checkpoint))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_open_clip: str):
    """Steps 1 and 3 to 5 with the OpenCLIP model, on local images (step 2 is the same for every model)."""
    work = tmp_path_factory.mktemp("open_clip_pipeline")
    for seed, (size, mode, name) in enumerate(IMAGES):
        make_image(work / "images" / name, size, mode, seed)
    prompts = ["a blue robot on a red background", "a corgi astronaut on the moon", "portrait of a kangaroo"]
    write_open_prompts_csv(work / "prompts.csv", [(p, f"http://127.0.0.1:9/{i}.png") for i, p in enumerate(prompts)])
    common = ["--OUT_DIR=out", f"--MODEL={tiny_open_clip}", "--NUM_WORKERS=0", "--BATCH_SIZE=4", "--IMG_DIR=images"]
    for script in ("extract_img_links_from_csv.py", "extract_visual_clip_embeddings.py",
                   "create_visual_knn_indices.py", "extract_textual_clip_embeddings.py",
                   "create_textual_knn_indices.py"):
        run_script(script, *common, "--CSV_FILE=prompts.csv", cwd=work)
    # semantic: the text query's first prompt is itself by its CLIP cosine, 1.0 (the hybrid mode: test_server_modes)
    query = run_script("test_visual_knn_index.py", *common, "--INPUT_IMG_PATH=images/c.png",
                       f"--INPUT_PROMPT={prompts[1]}", "--NUM_RESULTS=2", "--SEARCH_MODE=semantic", cwd=work)
    return work, prompts, query.stdout


def test_pipeline_with_an_open_clip_model(pipeline):
    work, prompts, query = pipeline
    manifest = json.loads((work / "out" / "visual_embeddings" / "manifest.json").read_text())
    assert manifest["model"].startswith("open_clip:")
    assert first_hit(query, "SIMILAR IMAGES TO THE IMAGE") == (1.0, "c.png")
    assert first_hit(query, "SIMILAR PROMPTS TO THE TEXT")[0] == 1.0
    verdicts = [line for line in query.splitlines() if line.startswith("torch CLIP and ONNX CLIP")]
    assert len(verdicts) == 4 and all(line.endswith("the same") for line in verdicts), query


def test_query_without_torch_with_an_open_clip_model(pipeline, tiny_open_clip: str):
    work, prompts, _ = pipeline
    result = query_without_torch(work, tiny_open_clip, f"--INPUT_PROMPT={prompts[2]}", "--INPUT_IMG_PATH=images/a.png",
                                 "--IMG_DIR=images", "--SEARCH_MODE=semantic")
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout
    assert first_hit(result.stdout, "SIMILAR IMAGES TO THE IMAGE") == (1.0, "a.png")
    assert first_hit(result.stdout, "SIMILAR PROMPTS TO THE TEXT")[0] == 1.0


def test_index_of_another_model_is_refused(pipeline):
    work, _, _ = pipeline
    result = run_script("test_visual_knn_index.py", "--OUT_DIR=out", "--MODEL=ViT-B/32",
                        "--INPUT_IMG_PATH=images/a.png", cwd=work, check=False)
    assert result.returncode == 1 and "holds vectors of the model open_clip:" in result.stderr
    assert "not of MODEL ViT-B/32: run with --MODEL=open_clip:" in result.stderr
