"""The metadata inside generated images: each format's parser, the texts read from files, and the folder's table."""

import csv
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_image
from generations import (
    NEGATIVE,
    a1111_text,
    comfyui_flux,
    comfyui_sd15,
    comfyui_sdxl,
    fooocus_json,
    invokeai,
    novelai_comment,
    png,
    unicode_comment,
    with_exif,
    write_folder,
)

from config_reader import load_config
from prompt_search.errors import UserError
from prompt_search.layout import METADATA_FILE, REJECTS_FILE
from prompt_search.sources import folder_metadata
from prompt_search.sources.comfyui import MAX_RANKED, parse_comfyui
from prompt_search.sources.folder_metadata import SCHEMA, extract_folder_metadata, read_texts
from prompt_search.sources.image_metadata import (
    KINDS,
    Malformed,
    decode_user_comment,
    parse_a1111,
    parse_dream,
    parse_metadata,
    parse_novelai,
    parse_sd_metadata,
)


def test_a1111_is_parsed_by_key_with_quoted_values_and_lines():
    text = ("a knight,\nin (shining:1.2) armour\nNegative prompt: ugly,\nbad hands\n"
            'Seed: 42, Size: 640x512, Template: "a, b: \\"c\\"", Steps: 20, CFG scale: 6.5, Sampler: Euler a, '
            "Model: sd15")
    fields = parse_a1111(text)
    assert fields["prompt"] == "a knight,\nin (shining:1.2) armour" and fields["negative_prompt"] == "ugly,\nbad hands"
    assert (fields["seed"], fields["width"], fields["height"], fields["num_steps"]) == ("42", "640", "512", "20")
    assert (fields["sampler"], fields["cfg_scale"], fields["model"]) == ("Euler a", "6.5", "sd15")


def test_a1111_without_settings_is_all_prompt():
    assert parse_a1111("just a prompt: with a colon")["prompt"] == "just a prompt: with a colon"
    assert parse_a1111("a cat\nNegative prompt: dogs")["negative_prompt"] == "dogs"


@pytest.mark.parametrize("raw", [
    unicode_comment("a cat 猫"), unicode_comment("a cat 猫", "utf-16-le"), unicode_comment("a cat 猫", "utf-16"),
    b"UNICODE\0" + "a cat 猫".encode(), b"ASCII\0\0\0a cat \xe7\x8c\xab", "a cat 猫".encode() + b"\0",
])
def test_user_comment_in_every_encoding_seen(raw):
    assert decode_user_comment(raw) == "a cat 猫"


def test_undecodable_user_comment_is_malformed():
    with pytest.raises(Malformed, match="undecodable"):
        decode_user_comment(b"UNICODE\0a\0\xd8")  # a lone surrogate half in UTF-16LE


def test_comfyui_follows_links_through_a_lora_loader_and_reads_nan():
    fields = parse_comfyui(comfyui_sd15("a corgi astronaut", 7, cfg=float("nan")))
    assert fields["prompt"] == "a corgi astronaut" and fields["negative_prompt"] == NEGATIVE
    assert fields["model"] == "dreamshaper_8.safetensors" and math.isnan(fields["cfg_scale"])
    assert (fields["seed"], fields["num_steps"], fields["sampler"], fields["width"], fields["height"]) == \
        (7, 25, "euler", 512, 640)


def test_comfyui_sdxl_text_g_and_l_through_a_combiner_and_a_controlnet():
    fields = parse_comfyui(comfyui_sdxl("a kangaroo", "watercolor", 3))
    assert fields["prompt"] == "a kangaroo\nwatercolor\ngolden hour" and fields["negative_prompt"] == NEGATIVE
    assert (fields["seed"], fields["cfg_scale"], fields["model"]) == (3, 6.0, "sd_xl_base_1.0.safetensors")


def test_comfyui_flux_guider_and_custom_sampler():
    fields = parse_comfyui(comfyui_flux("neon city", 11))
    assert fields["prompt"] == "neon city" and fields["negative_prompt"] == ""  # BasicGuider has no negative
    assert (fields["seed"], fields["num_steps"], fields["sampler"], fields["model"], fields["width"]) == \
        (11, 20, "euler", "flux1-dev.safetensors", 1024)


def test_comfyui_without_a_sampler_takes_every_text_encoder():
    graph = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "first"}},
             "2": {"class_type": "SaveImage", "inputs": {}},
             "10": {"class_type": "CLIPTextEncode", "inputs": {"text": "second"}}}
    assert parse_comfyui(json.dumps(graph))["prompt"] == "first\nsecond"
    with pytest.raises(ValueError):
        parse_comfyui("[1, 2]")


def test_invokeai_old_formats_and_novelai():
    old = parse_sd_metadata(json.dumps({"model_weights": "sd-1.5", "image": {
        "prompt": [{"prompt": "a red barn [fog, people]", "weight": 1}], "steps": 40, "seed": 5, "sampler": "k_lms"}}))
    assert (old["prompt"], old["negative_prompt"], old["model"], old["num_steps"]) == \
        ("a red barn", "fog, people", "sd-1.5", 40)
    dream = parse_dream('"a red barn [fog]" -s 50 -S 42 -W 512 -H 768 -C 7.5 -A k_lms')
    assert (dream["prompt"], dream["negative_prompt"], dream["seed"], dream["height"], dream["sampler"]) == \
        ("a red barn", "fog", "42", "768", "k_lms")
    novelai = parse_novelai("a fox", novelai_comment(9), "NovelAI Diffusion V3")
    assert (novelai["prompt"], novelai["negative_prompt"], novelai["cfg_scale"], novelai["model"]) == \
        ("a fox", NEGATIVE, 5.0, "NovelAI Diffusion V3")


def test_every_format_gives_its_fields():
    cases = {
        "invokeai": {"invokeai_metadata": invokeai("ramen", 4)},
        "fooocus": {"parameters": fooocus_json("a dragon", 5), "fooocus_scheme": "json"},
        "novelai": {"Description": "a fox", "Comment": novelai_comment(6), "Software": "NovelAI"},
        "comfyui": {"prompt": comfyui_sd15("a corgi", 7)},
        "a1111": {"UserComment": unicode_comment(a1111_text("a castle", 8))},
    }
    for tool, texts in cases.items():
        fields, problems = parse_metadata(texts)
        assert fields["tool"] == tool and fields["prompt"] and fields["negative_prompt"] == NEGATIVE, tool
        assert isinstance(fields["seed"], int) and isinstance(fields["cfg_scale"], float) and not problems, tool
    fooocus, _ = parse_metadata(cases["fooocus"])
    assert (fooocus["seed"], fooocus["width"], fooocus["height"], fooocus["model"]) == \
        (5, 1152, 896, "juggernautXL_v8Rundiffusion")


def test_two_formats_keep_both_preferring_the_setting():
    texts = {"parameters": a1111_text("from a1111", 1), "prompt": comfyui_flux("from comfyui", 2)}
    a1111, _ = parse_metadata(texts, "a1111")
    comfyui, _ = parse_metadata(texts, "comfyui")
    assert (a1111["prompt"], a1111["seed"], a1111["tool"]) == ("from a1111", 1, "a1111,comfyui")
    assert (comfyui["prompt"], comfyui["seed"], comfyui["tool"]) == ("from comfyui", 2, "comfyui,a1111")
    assert comfyui["negative_prompt"] == NEGATIVE  # the graph has none: A1111's fills it


def test_bad_metadata_is_counted_never_fatal():
    fields, problems = parse_metadata({"prompt": "{not json", "parameters": "a cat\nSteps: many, Seed: 1e30, Size: x"})
    assert fields["prompt"] == "a cat" and fields["seed"] is None and fields["tool"] == "a1111"
    assert [reason for reason, _ in problems] == ["a1111_bad_value"] * 2 + ["comfyui_invalid_json"]
    assert parse_metadata({}) == ({**dict.fromkeys(KINDS), "prompt": "", "tool": None}, [])


def test_the_table_holds_every_field():
    assert set(SCHEMA.names) == {"id", "tool", *KINDS}


def test_preferred_metadata_is_checked():
    with pytest.raises(UserError, match="PREFERRED_METADATA must be one of"):
        load_config(["--PREFERRED_METADATA=midjourney"])


def test_texts_read_from_files(tmp_path):
    text = a1111_text("a cat in a teacup", 1)
    assert read_texts(png(tmp_path / "t.png", {"parameters": text}))[0]["parameters"] == text
    utf8_in_text = png(tmp_path / "u.png", {"parameters": "caf\u00c3\u00a9"})  # UTF-8 bytes of café, in a tEXt
    assert read_texts(utf8_in_text)[0]["parameters"] == "café"
    jpeg = with_exif(tmp_path / "e.jpg", unicode_comment(text), in_ifd0=True)
    texts, size = read_texts(jpeg)
    assert decode_user_comment(texts["UserComment"]) == text and size == (64, 96)


def test_folder_of_every_format(tmp_path):
    prompts = write_folder(tmp_path / "images")
    summary = extract_folder_metadata(str(tmp_path / "images"), str(tmp_path / "out"), "a1111")
    table = pd.read_parquet(tmp_path / "out" / METADATA_FILE).set_index("id")
    assert table["prompt"].to_dict() == prompts
    assert table.loc["comfyui/lora.png", "model"] == "dreamshaper_8.safetensors"
    assert table.loc["a1111/castle.jpg", "seed"] == 3 and table.loc["a1111/owl.png", "negative_prompt"] == NEGATIVE
    assert table.loc["plain/nothing.png", "width"] == 64  # no metadata: the file's own size
    assert table.loc["novelai/fox.png", "tool"] == "novelai" and pd.isna(table.loc["plain/nothing.png", "tool"])
    with open(tmp_path / "out" / REJECTS_FILE, newline="") as f:
        rejects = list(csv.DictReader(f))
    assert [(r["path"].endswith("broken-graph.png"), r["reason"]) for r in rejects] == [(True, "comfyui_invalid_json")]
    assert summary.images == len(prompts) and summary.prompts == len(prompts) - 2
    assert summary.rejected == {"comfyui_invalid_json": 1}


def test_rerun_reads_only_new_or_changed_images_and_equals_a_full_run(tmp_path, monkeypatch):
    images, out = tmp_path / "images", tmp_path / "out"
    prompts = write_folder(images)
    extract_folder_metadata(str(images), str(out), "a1111")
    png(images / "a1111/bicycle.png", {"parameters": a1111_text("a red bicycle", 99)}, 99)  # new
    (images / "a1111/owl.txt").write_text(a1111_text("an owl without a crown", 5), encoding="utf-8")  # changed
    (images / "novelai/fox.png").unlink()  # removed
    read = []
    image_row = folder_metadata.image_row
    monkeypatch.setattr(folder_metadata, "image_row", lambda path, preferred: read.append(path) or
                        image_row(path, preferred))
    summary = extract_folder_metadata(str(images), str(out), "a1111")
    assert sorted(os.path.relpath(path, images) for path in read) == ["a1111/bicycle.png", "a1111/owl.png"]
    assert (summary.read, summary.reused, summary.removed) == (2, len(prompts) - 2, 1)
    table = pd.read_parquet(out / METADATA_FILE).set_index("id")
    assert table.loc["a1111/owl.png", "prompt"] == "an owl without a crown" and "novelai/fox.png" not in table.index
    full = extract_folder_metadata(str(images), str(tmp_path / "full"), "a1111")
    assert pd.read_parquet(tmp_path / "full" / METADATA_FILE).set_index("id").equals(table)
    assert (out / REJECTS_FILE).read_bytes() == (tmp_path / "full" / REJECTS_FILE).read_bytes()  # kept for reused
    assert (summary.prompts, summary.tools, summary.rejected) == (full.prompts, full.tools, full.rejected)
    read.clear()
    extract_folder_metadata(str(images), str(out), "comfyui")  # another setting: every image read again
    assert len(read) == len(table)


# Issue 25: A1111 text starting with {, every Fooocus scheme, stealth PNG-info, ComfyUI's saved sampler, unreadable
# known formats always a reject, deeply nested JSON a reject, seeds exact to 2**64 - 1.

def test_a1111_prompt_starting_with_a_brace_is_a1111_not_fooocus(tmp_path):
    text = a1111_text("{{{{high heels}}}}, 1girl, {masterpiece}", 7)
    fields, problems = parse_metadata({"parameters": text})
    assert (fields["tool"], fields["prompt"], fields["seed"], problems) == \
        ("a1111", "{{{{high heels}}}}, 1girl, {masterpiece}", 7, [])
    image = make_image(tmp_path / "braces.png", (64, 96), "RGB", 1)
    (tmp_path / "braces.txt").write_text(text, encoding="utf-8")
    row, problems = folder_metadata.image_row(str(image), "a1111")
    assert (row["prompt"], row["negative_prompt"], row["tool"], problems) == \
        ("{{{{high heels}}}}, 1girl, {masterpiece}", NEGATIVE, "a1111", [])


FOOOCUS_A1111 = ("a dragon, cinematic still, glass, 4k\nNegative prompt: blurry, lowres, ugly\n"
                 "Steps: 30, Sampler: DPM++ 2M SDE Karras, Seed: 18446744073709551615, Size: 896x1152, CFG scale: 4, "
                 "Sharpness: 2, ADM Guidance: \"(1.5, 0.8, 0.3)\", Model: juggernautXL_v8Rundiffusion, "
                 "Model hash: aeb7e9e689, Performance: Speed, Scheduler: karras, VAE: Default (model), "
                 "Raw prompt: a dragon, Raw negative prompt: blurry, Version: Fooocus v2.5.5")


def test_fooocus_a1111_scheme_takes_the_prompt_as_typed():
    """Fooocus's `a1111` scheme (modules/meta_parser.py, A1111MetadataParser.to_string): the prompt lines are the
    style-expanded prompt; `Raw prompt` is what the user typed, which Fooocus itself loads back."""
    fields, problems = parse_metadata({"parameters": FOOOCUS_A1111, "fooocus_scheme": "a1111"})
    assert (fields["tool"], fields["prompt"], fields["negative_prompt"], problems) == \
        ("fooocus", "a dragon", "blurry", [])
    assert (fields["seed"], fields["num_steps"], fields["width"], fields["model_hash"]) == \
        ((1 << 64) - 1, 30, 896, "aeb7e9e689")


def test_fooocus_jpeg_and_webp_carry_the_scheme_in_the_maker_note(tmp_path):
    """Fooocus's JPEG/WebP (modules/meta_parser.py, get_exif): UserComment and MakerNote set in IFD0, as str."""
    json_scheme = fooocus_json("a dragon made of glass", (1 << 64) - 1)
    jpeg = with_exif(tmp_path / "f.jpg", ifd0={0x9286: json_scheme, 0x927C: "fooocus", 0x0131: "Fooocus v2.5.5"})
    webp = with_exif(tmp_path / "f.webp", ifd0={0x9286: FOOOCUS_A1111, 0x927C: "a1111"})
    assert read_texts(jpeg)[0]["fooocus_scheme"] == "fooocus" and read_texts(webp)[0]["fooocus_scheme"] == "a1111"
    row, problems = folder_metadata.image_row(str(jpeg), "a1111")
    assert (row["prompt"], row["seed"], row["tool"], problems) == \
        ("a dragon made of glass", (1 << 64) - 1, "fooocus", [])
    row, problems = folder_metadata.image_row(str(webp), "a1111")
    assert (row["prompt"], row["seed"], row["tool"], problems) == ("a dragon", (1 << 64) - 1, "fooocus", [])
    camera = with_exif(tmp_path / "camera.jpg", ifd0={0x927C: "\x00\x01Nikon binary"})
    assert "fooocus_scheme" not in read_texts(camera)[0]


def test_fooocus_json_with_only_styles_takes_the_expanded_prompt():
    data = {**json.loads(fooocus_json("", 3)), "full_prompt": ["cinematic still, a lighthouse", "moody"]}
    fields, problems = parse_metadata({"parameters": json.dumps(data), "fooocus_scheme": "fooocus"})
    assert (fields["prompt"], fields["seed"], problems) == ("cinematic still, a lighthouse, moody", 3, [])


def test_fooocus_scheme_that_cannot_be_read_is_a_reject():
    fields, problems = parse_metadata({"parameters": "a dragon\nSteps: 3", "fooocus_scheme": "fooocus"})
    assert [reason for reason, _ in problems] == ["fooocus_malformed"] and fields["prompt"] == ""


def test_comfyui_grid_of_variants_and_preview_only_graphs_say_ambiguous():
    def sampler(seed: int, text: str, latent: str) -> dict:
        return {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                                                     "positive": [text, 0], "negative": ["9", 0],
                                                     "latent_image": [latent, 0], "model": ["1", 0]}}
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
             "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
             "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox"}},
             "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue fox"}},
             "5": sampler(1, "3", "2"), "6": sampler((1 << 64) - 1, "4", "2"),
             "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0]}},
             "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0]}},
             "9": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry"}},
             "10": {"class_type": "ImageBatch", "inputs": {"image1": ["7", 0], "image2": ["8", 0]}},
             "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "grid"}}}
    fields, problems = parse_metadata({"prompt": json.dumps(graph)})
    assert (fields["prompt"], fields["seed"], fields["tool"], problems) == \
        ("a blue fox", (1 << 64) - 1, "comfyui:ambiguous", [])
    graph["11"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}  # no saver: the preview's
    fields, _ = parse_metadata({"prompt": json.dumps(graph)})
    assert (fields["prompt"], fields["seed"], fields["tool"]) == ("a red fox", 1, "comfyui")


@pytest.mark.parametrize("seed", [1 << 64, -1])
def test_a_seed_outside_unsigned_64_bits_is_a_bad_value(seed):
    fields, problems = parse_metadata({"prompt": comfyui_sd15("a corgi", seed)})
    assert fields["seed"] is None and problems == [("comfyui_bad_value", f"seed={str(seed)!r}")]


def test_a_known_format_without_a_prompt_is_a_reject():
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
    fields, problems = parse_metadata({"prompt": json.dumps(graph)})
    assert fields["tool"] == "comfyui" and problems == [("no_prompt", "comfyui metadata without a prompt")]


DEEP = 100_000


@pytest.mark.parametrize("texts", [
    {"prompt": "[" * DEEP + "]" * DEEP},  # a ComfyUI chunk
    {"prompt": '{"1": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}"},
    {".txt": '{"prompt": ' + "[" * DEEP + "]" * DEEP + "}"},  # a .txt beside the image
    {"invokeai_metadata": "[" * DEEP + "]" * DEEP},
])
def test_deeply_nested_json_is_a_counted_reject(texts):
    fields, problems = parse_metadata(texts)
    assert [reason.endswith("_too_deeply_nested") for reason, _ in problems] == [True] and fields["prompt"] == ""


def test_a_node_chain_deeper_than_the_recursion_limit_is_a_reject():
    graph = {str(i): {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": [str(i + 1), 0]}}
             for i in range(1, 5000)}
    graph["0"] = {"class_type": "KSampler", "inputs": {"positive": ["1", 0], "latent_image": ["9999", 0]}}
    graph["5000"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "deep"}}
    graph["5001"] = {"class_type": "SaveImage", "inputs": {"images": ["0", 0]}}
    _, problems = parse_metadata({"prompt": json.dumps(graph)})
    assert [reason for reason, _ in problems] == ["comfyui_too_deeply_nested"]


def test_deeply_nested_json_in_a_folder_is_counted_and_the_step_goes_on(tmp_path):
    images = tmp_path / "images"
    png(images / "deep-graph.png", {"prompt": "[" * DEEP + "]" * DEEP})
    make_image(images / "deep-txt.png", (64, 96), "RGB", 2)
    (images / "deep-txt.txt").write_text('{"a": ' + "[" * DEEP + "]" * DEEP + "}", encoding="utf-8")
    png(images / "fine.png", {"parameters": a1111_text("a fine cat", 3)}, 3)
    summary = extract_folder_metadata(str(images), str(tmp_path / "out"), "a1111")
    assert summary.rejected == {"comfyui_too_deeply_nested": 1, "fooocus_too_deeply_nested": 1}
    with open(tmp_path / "out" / REJECTS_FILE, newline="") as f:
        rejects = {(Path(r["path"]).name, r["reason"]) for r in csv.DictReader(f)}
    assert rejects == {("deep-graph.png", "comfyui_too_deeply_nested"), ("deep-txt.png", "fooocus_too_deeply_nested")}
    table = pd.read_parquet(tmp_path / "out" / METADATA_FILE).set_index("id")
    assert table["prompt"].to_dict() == {"deep-graph.png": "", "deep-txt.png": "", "fine.png": "a fine cat"}


def test_comfyui_a_saved_latent_is_not_the_image():
    graph = json.loads(comfyui_sd15("a corgi", 7))
    graph["30"] = {"class_type": "KSampler", "inputs": {**graph["3"]["inputs"], "seed": 8, "latent_image": ["3", 0]}}
    graph["31"] = {"class_type": "SaveLatent", "inputs": {"samples": ["30", 0], "filename_prefix": "latents/x"}}
    graph["32"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0]}}
    graph["33"] = {"class_type": "SaveImage", "inputs": {"images": ["32", 0]}}
    fields, _ = parse_metadata({"prompt": json.dumps(graph)})
    assert (fields["seed"], fields["tool"]) == (7, "comfyui")


def test_comfyui_too_many_saved_samplers_to_rank_take_the_last():
    """Ranking samplers by the others before them costs a walk each: past MAX_RANKED the last node is taken."""
    graph = {"0": {"class_type": "EmptyLatentImage", "inputs": {"width": 8, "height": 8}},
             "1": {"class_type": "CLIPTextEncode", "inputs": {"text": "first"}}}
    for i in range(2, 2 + MAX_RANKED):  # a chain: the most downstream is the first listed, "2"
        graph[str(i)] = {"class_type": "KSampler", "inputs": {"seed": i, "positive": ["1", 0],
                                                              "latent_image": [str(i + 1), 0]}}
    graph[str(2 + MAX_RANKED)] = {"class_type": "KSampler", "inputs": {"seed": 0, "positive": ["1", 0],
                                                                        "latent_image": ["0", 0]}}
    batch = {f"image{i}": [str(i), 0] for i in range(2, 3 + MAX_RANKED)}
    graph["9999"] = {"class_type": "SaveImage", "inputs": {"images": ["9998", 0]}}
    graph["9998"] = {"class_type": "ImageBatchMany", "inputs": batch}
    assert parse_metadata({"prompt": json.dumps(graph)})[0]["seed"] == 0  # the last of MAX_RANKED + 1
    del graph[str(2 + MAX_RANKED)], graph["9998"]["inputs"][f"image{2 + MAX_RANKED}"]
    graph[str(1 + MAX_RANKED)]["inputs"]["latent_image"] = ["0", 0]
    assert parse_metadata({"prompt": json.dumps(graph)})[0]["seed"] == 2  # ranked: the one downstream of the rest
