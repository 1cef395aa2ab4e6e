"""Files the real generators wrote (tests/fixtures/generations, see SOURCES.md there), read as step 1 for a folder
reads them: each field checked against the text the file itself carries (its chunk, its graph's node)."""

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from prompt_search.layout import METADATA_FILE, REJECTS_FILE
from prompt_search.sources.folder_metadata import extract_folder_metadata, image_row

FIXTURES = Path(__file__).parent / "fixtures" / "generations"


def read(name: str) -> dict:
    """The row step 1 makes of the fixture, which must have no problem."""
    row, problems = image_row(str(FIXTURES / name), "a1111")
    assert problems == [], name
    return row


def chunks(name: str) -> dict:
    with Image.open(FIXTURES / name) as image:
        return dict(image.info)


def settings(row: dict) -> tuple:
    return row["seed"], row["num_steps"], row["cfg_scale"], row["sampler"], row["width"], row["height"], row["model"]


A1111_DUCK = ("photo of a duck\nNegative prompt: monochrome\nSteps: 15, Sampler: UniPC, CFG scale: 5, Seed: 235284042, "
              "Size: 512x400, Model hash: c0d1994c73, Model: realistic_realisticVisionV20_v20")


@pytest.mark.parametrize("name", ["a1111/automatic1111_cropped.png", "a1111/automatic1111_cropped.jpg"])
def test_a1111_png_chunk_and_jpeg_user_comment(name):
    texts = chunks(name)
    if "parameters" in texts:
        assert texts["parameters"] == A1111_DUCK
    else:  # the JPEG: UNICODE + UTF-16 in the EXIF sub-IFD
        assert A1111_DUCK.encode("utf-16-be") in texts["exif"]
    row = read(name)
    assert (row["prompt"], row["negative_prompt"], row["tool"]) == ("photo of a duck", "monochrome", "a1111")
    assert settings(row) == (235284042, 15, 5.0, "UniPC", 512, 400, "realistic_realisticVisionV20_v20")
    assert row["model_hash"] == "c0d1994c73"


def test_a1111_text_moved_after_the_image_data_by_a_re_encoder():
    """ImageMagick's rewrite of the file above: its `parameters` in a zTXt after the image data."""
    row = read("a1111/automatic1111_text_after_image.png")
    assert (row["prompt"], row["negative_prompt"], row["seed"], row["model_hash"]) == \
        ("photo of a duck", "monochrome", 235284042, "c0d1994c73")


def test_a1111_stealth_alpha_without_any_chunk():
    """sd-webui-stealth-pnginfo's default: gzip in the alpha channel; the file has no text chunk at all."""
    assert not {key for key in chunks("a1111/automatic1111_stealth.png") if isinstance(key, str)} - {"dpi"}
    row = read("a1111/automatic1111_stealth.png")
    assert (row["prompt"], row["negative_prompt"], row["tool"]) == ("a circle", "a square", "a1111")
    assert settings(row) == (2015833630, 20, 7.0, "Euler", 64, 64, "realisticVisionV51_v51VAE")


def test_novelai_chunks_and_the_same_from_its_stealth_alpha(tmp_path):
    name = "novelai/novelai_sample-0316.png"
    texts = chunks(name)
    comment = json.loads(texts["Comment"])
    row = read(name)
    assert row["prompt"] == texts["Description"].strip() and row["negative_prompt"] == comment["uc"]
    assert settings(row) == (comment["seed"], comment["steps"], comment["scale"], comment["sampler"],
                             comment["width"], comment["height"], texts["Source"])
    stripped = tmp_path / "stripped.png"  # the same pixels, every text chunk gone (as an upload site strips them)
    with Image.open(FIXTURES / name) as image:
        image.save(stripped)
    assert not {key for key in Image.open(stripped).info if isinstance(key, str)} - {"dpi"}
    from_pixels, problems = image_row(str(stripped), "a1111")
    assert from_pixels == row and problems == []


def test_novelai_chunks():
    texts = chunks("novelai/novelai1_cropped.png")
    comment = json.loads(texts["Comment"])
    row = read("novelai/novelai1_cropped.png")
    assert (row["prompt"], row["negative_prompt"], row["tool"]) == (texts["Description"].strip(), comment["uc"],
                                                                    "novelai")
    assert (row["seed"], row["num_steps"], row["cfg_scale"], row["sampler"], row["model"]) == \
        (2253955223, 50, 10.0, "k_euler_ancestral", "Stable Diffusion 1D44365E")


def test_fooocus_2_4_json_scheme_keeps_a_seed_over_2_to_the_53():
    texts = chunks("fooocus/fooocus1_cropped.png")
    data = json.loads(texts["parameters"])
    assert texts["fooocus_scheme"] == "fooocus" and data["version"] == "Fooocus v2.4.3"
    row = read("fooocus/fooocus1_cropped.png")
    assert (row["prompt"], row["negative_prompt"], row["tool"]) == ("a smiling goldfish", None, "fooocus")
    assert row["seed"] == int(data["seed"]) == 6952411511246973023  # as float64 it would end in ...3024
    assert settings(row) == (int(data["seed"]), 30, 4.0, "dpmpp_2m_sde_gpu", 768, 1280, data["base_model"])
    assert row["model_hash"] == data["base_model_hash"]


def test_invokeai_every_generation():
    imeta = json.loads(chunks("invokeai/invokeai_imeta1.png")["invokeai_metadata"])
    row = read("invokeai/invokeai_imeta1.png")
    assert (row["prompt"], row["negative_prompt"]) == (imeta["positive_prompt"], imeta["negative_prompt"])
    assert settings(row) == (imeta["seed"], imeta["steps"], imeta["cfg_scale"], imeta["scheduler"], 1024, 1024,
                             imeta["model"]["model_name"])
    sd_metadata = json.loads(chunks("invokeai/invokeai_sdmeta1.png")["sd-metadata"])
    for name in ("invokeai/invokeai_sdmeta1.png", "invokeai/invokeai_dream1.png"):
        row = read(name)
        assert row["prompt"].startswith("professional full body photo of young woman,") and \
            row["prompt"].endswith("film grain, low contrast")
        assert row["negative_prompt"] == "rendering, glowing eyes, skinny" and row["tool"] == "invokeai"
        assert (row["seed"], row["num_steps"], row["cfg_scale"], row["sampler"], row["width"], row["height"]) == \
            (2980747362, 50, 5.0, "k_lms", 512, 768)
    assert read("invokeai/invokeai_sdmeta1.png")["model"] == sd_metadata["model_weights"]


# ComfyUI: (file, the sampler whose output is saved, its prompt's and negative's text nodes, the node holding the
# seed, whether the graph saves the output of more than one sampler)
COMFYUI = [
    ("img2img_cropped.png", "3", ["6"], "7", "3", False),
    ("flux_dev_example_1x1.png", "13", ["6"], None, "25", False),  # SamplerCustomAdvanced; RandomNoise has the seed
    ("sdxl_refiner_prompt_example_1x1.png", "11", ["15"], "16", "10", False),  # the refiner adds no noise: the base's
    ("noisy_latents_3_subjects_1x1.png", "58", ["71"], "7", "60", False),  # the composite's base latent's sampler
    ("hiresfix_latent_workflow_1x1.png", "11", ["6"], "7", "11", True),  # saves both passes
    ("hiresfix_esrgan_workflow_1x1.png", "11", ["6"], "7", "11", True),  # through an ESRGAN upscale and VAEEncode
    ("latent_upscale_different_prompt_model_1x1.png", "32", ["15"], "14", "32", True),
    ("square_area_for_subject_1x1.png", "24", ["26"], "27", "24", True),  # area prompts in the first pass
    ("night_evening_day_morning_cropped.png", "24", ["26"], "27", "24", True),
    ("unclip_2pass_cropped.png", "41", ["49"], "47", "41", True),
    ("noisy_latents_3_subjects_cropped.png", "24", ["54"], "27", "24", True),
]


@pytest.mark.parametrize(("name", "sampler", "positive", "negative", "seed", "ambiguous"), COMFYUI)
def test_comfyui_takes_the_sampler_the_saved_image_comes_from(name, sampler, positive, negative, seed, ambiguous):
    graph = json.loads(chunks(f"comfyui/{name}")["prompt"])
    inputs = graph[sampler]["inputs"]
    row = read(f"comfyui/{name}")
    assert row["prompt"] == "\n".join(graph[key]["inputs"]["text"].strip() for key in positive)
    assert row["negative_prompt"] == (graph[negative]["inputs"]["text"].strip() if negative else None)
    seeds = graph[seed]["inputs"]
    assert row["seed"] == seeds.get("seed", seeds.get("noise_seed"))
    if "steps" in inputs:
        assert (row["num_steps"], row["cfg_scale"], row["sampler"]) == \
            (inputs["steps"], inputs["cfg"], inputs["sampler_name"])
    assert row["tool"] == ("comfyui:ambiguous" if ambiguous else "comfyui")


def test_the_folder_of_real_files_in_one_table(tmp_path):
    """Step 1 for a folder over every fixture: one row each, the same as read one by one, and no reject."""
    folder = tmp_path / "generations"
    shutil.copytree(FIXTURES, folder, ignore=shutil.ignore_patterns("*.md"))
    summary = extract_folder_metadata(str(folder), str(tmp_path / "out"), "a1111")
    table = pd.read_parquet(tmp_path / "out" / METADATA_FILE).set_index("id")
    files = sorted(path.relative_to(FIXTURES).as_posix() for path in FIXTURES.rglob("*") if path.suffix != ".md"
                   and path.is_file())
    assert sorted(table.index) == files and summary.prompts == len(files)
    for name in files:
        assert table.loc[name, "prompt"] == read(name)["prompt"]
    with open(tmp_path / "out" / REJECTS_FILE, newline="") as f:
        assert list(csv.DictReader(f)) == []
