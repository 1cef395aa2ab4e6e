"""Image files as each generator writes them, written by the tests themselves: A1111/Forge, ComfyUI, InvokeAI,
NovelAI and Fooocus, with the odd cases their readers have hit."""

import json
from pathlib import Path

from conftest import make_image
from PIL import Image, PngImagePlugin

NEGATIVE = "blurry, lowres"


def a1111_text(prompt: str, seed: int, negative: str = NEGATIVE) -> str:
    """A1111's layout: prompt lines, the negative, then the settings, a value with , and : JSON-quoted."""
    return (f"{prompt}\nNegative prompt: {negative}\n"
            f'Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: {seed}, Size: 512x768, '
            f'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "detail: 1a2b, style: 3c4d", '
            f"Version: v1.10.1")


def png(path: Path, chunks: dict[str, str], seed: int = 0, itxt: bool = False) -> Path:
    """A PNG with these text chunks: tEXt, or iTXt (what Pillow writes when a text is not Latin-1)."""
    make_image(path, (64, 96), "RGB", seed)
    info = PngImagePlugin.PngInfo()
    for key, text in chunks.items():
        info.add_itxt(key, text) if itxt else info.add_text(key, text)
    Image.open(path).save(path, pnginfo=info)
    return path


def with_exif(path: Path, user_comment: bytes | None = None, in_ifd0: bool = False, seed: int = 0,
              ifd0: dict[int, str] | None = None) -> Path:
    """A JPEG or WebP (by path's suffix) with this EXIF UserComment, in the EXIF sub-IFD or in IFD0, and IFD0 tags."""
    make_image(path.with_suffix(".png"), (64, 96), "RGB", seed)
    image = Image.open(path.with_suffix(".png")).convert("RGB")
    path.with_suffix(".png").unlink()
    exif = Image.Exif()
    if user_comment is not None:
        (exif if in_ifd0 else exif.get_ifd(0x8769))[0x9286] = user_comment
    for tag, value in (ifd0 or {}).items():
        exif[tag] = value
    image.save(path, exif=exif.tobytes())
    return path


def unicode_comment(text: str, encoding: str = "utf-16-be") -> bytes:
    return b"UNICODE\0" + text.encode(encoding)


def comfyui_sd15(prompt: str, seed: int, cfg: float = 7.5) -> str:
    """KSampler with a LoRA loader between the checkpoint and the sampler, the prompt's text a link to a string node;
    and the NaN ComfyUI writes for an unset float."""
    graph = {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 25, "cfg": cfg, "sampler_name": "euler",
                                                  "scheduler": "normal", "denoise": 1.0, "model": ["10", 0],
                                                  "positive": ["6", 0], "negative": ["7", 0],
                                                  "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "dreamshaper_8.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 640, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": ["12", 0], "clip": ["10", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["10", 1]}},
        "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "detail.safetensors", "strength_model": 0.8,
                                                     "strength_clip": float("nan"), "model": ["4", 0],
                                                     "clip": ["4", 1]}},
        "12": {"class_type": "String Literal", "inputs": {"string": prompt}},
        "20": {"class_type": "CLIPTextEncode", "inputs": {"text": "an unused encoder's text", "clip": ["4", 1]}},
    }
    return json.dumps(graph)  # NaN written as NaN, as ComfyUI's json.dumps does


def comfyui_sdxl(prompt_g: str, prompt_l: str, seed: int) -> str:
    """SDXL's CLIPTextEncodeSDXL with text_g and text_l, combined with a second conditioning, through a ControlNet."""
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "2": {"class_type": "CLIPTextEncodeSDXL", "inputs": {"text_g": prompt_g, "text_l": prompt_l, "width": 1024,
                                                            "height": 1024, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncodeSDXL", "inputs": {"text_g": NEGATIVE, "text_l": NEGATIVE, "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "golden hour", "clip": ["1", 1]}},
        "5": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["2", 0], "conditioning_2": ["4", 0]}},
        "6": {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["5", 0], "negative": ["3", 0],
                                                                 "strength": 0.5}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "8": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": seed, "steps": 30, "cfg": 6.0,
                                                          "sampler_name": "dpmpp_2m", "model": ["1", 0],
                                                          "positive": ["6", 0], "negative": ["6", 1],
                                                          "latent_image": ["7", 0]}},
    }
    return json.dumps(graph)


def comfyui_flux(prompt: str, seed: int) -> str:
    """Flux: SamplerCustomAdvanced, its prompt through BasicGuider and FluxGuidance to CLIPTextEncodeFlux's t5xxl."""
    graph = {
        "6": {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip_l": prompt, "t5xxl": prompt, "guidance": 3.5,
                                                            "clip": ["11", 0]}},
        "12": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "fp8"}},
        "13": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["25", 0], "guider": ["22", 0],
                                                                "sampler": ["16", 0], "sigmas": ["17", 0],
                                                                "latent_image": ["27", 0]}},
        "16": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "17": {"class_type": "BasicScheduler", "inputs": {"scheduler": "simple", "steps": 20, "model": ["12", 0]}},
        "22": {"class_type": "BasicGuider", "inputs": {"model": ["12", 0], "conditioning": ["26", 0]}},
        "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "26": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["6", 0]}},
        "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 768, "batch_size": 1}},
    }
    return json.dumps(graph)


def invokeai(prompt: str, seed: int) -> str:
    return json.dumps({"generation_mode": "txt2img", "positive_prompt": prompt, "negative_prompt": NEGATIVE,
                       "width": 768, "height": 512, "seed": seed, "steps": 30, "cfg_scale": 7.5,
                       "scheduler": "dpmpp_2m_k",
                       "model": {"name": "juggernaut", "hash": "blake3:abc", "base": "sdxl"}})


def novelai_comment(seed: int) -> str:
    return json.dumps({"prompt": "ignored: Description has it", "steps": 28, "sampler": "k_euler_ancestral",
                       "seed": seed, "scale": 5.0, "uc": NEGATIVE, "width": 832, "height": 1216})


def fooocus_json(prompt: str, seed: int) -> str:
    return json.dumps({"prompt": prompt, "negative_prompt": NEGATIVE, "steps": 30, "sampler": "dpmpp_2m_sde_gpu",
                       "guidance_scale": 4.0, "seed": str(seed), "resolution": "(1152, 896)",
                       "base_model": "juggernautXL_v8Rundiffusion", "version": "Fooocus v2.5.5"})


def write_folder(folder: Path) -> dict[str, str]:
    """A folder of one image of each format and odd case; returns each image's id and the prompt it must show."""
    prompts = {}

    def add(name: str, prompt: str) -> int:
        prompts[name] = prompt
        return len(prompts)  # a different picture for each image

    seed = add("a1111/robot.png", "a blue robot on a red background")
    png(folder / "a1111/robot.png", {"parameters": a1111_text(prompts["a1111/robot.png"], seed)}, seed)
    seed = add("a1111/猫.png", "一只猫 a cat in a teacup")
    png(folder / "a1111/猫.png", {"parameters": a1111_text(prompts["a1111/猫.png"], seed)}, seed, itxt=True)
    seed = add("a1111/castle.jpg", "a castle in the clouds")
    with_exif(folder / "a1111/castle.jpg", unicode_comment(a1111_text(prompts["a1111/castle.jpg"], seed)), seed=seed)
    seed = add("a1111/lighthouse.webp", "a lighthouse in a storm")
    with_exif(folder / "a1111/lighthouse.webp",
              unicode_comment(a1111_text(prompts["a1111/lighthouse.webp"], seed), "utf-16-le"), True, seed)
    seed = add("a1111/owl.png", "an owl wearing a crown")
    make_image(folder / "a1111/owl.png", (64, 96), "RGB", seed)
    (folder / "a1111/owl.txt").write_text(a1111_text(prompts["a1111/owl.png"], seed), encoding="utf-8")
    seed = add("comfyui/lora.png", "a corgi astronaut on the moon")
    png(folder / "comfyui/lora.png", {"prompt": comfyui_sd15(prompts["comfyui/lora.png"], seed)}, seed)
    seed = add("comfyui/sdxl.png", "portrait of a kangaroo\nwatercolor\ngolden hour")
    png(folder / "comfyui/sdxl.png", {"prompt": comfyui_sdxl("portrait of a kangaroo", "watercolor", seed)}, seed)
    seed = add("comfyui/flux.webp", "neon city at night")
    with_exif(folder / "comfyui/flux.webp", seed=seed,
              ifd0={0x0110: "prompt:" + comfyui_flux(prompts["comfyui/flux.webp"], seed), 0x010F: "workflow:{}"})
    seed = add("invokeai/ramen.png", "a bowl of ramen, studio photo")
    png(folder / "invokeai/ramen.png", {"invokeai_metadata": invokeai(prompts["invokeai/ramen.png"], seed)}, seed)
    seed = add("novelai/fox.png", "a fox spirit in a shrine")
    png(folder / "novelai/fox.png", {"Title": "NovelAI generated image", "Description": prompts["novelai/fox.png"],
                                     "Software": "NovelAI", "Source": "NovelAI Diffusion V3",
                                     "Comment": novelai_comment(seed)}, seed)
    seed = add("fooocus/dragon.png", "a dragon made of glass")
    png(folder / "fooocus/dragon.png", {"parameters": fooocus_json(prompts["fooocus/dragon.png"], seed),
                                        "fooocus_scheme": "json"}, seed)
    seed = add("plain/nothing.png", "")
    make_image(folder / "plain/nothing.png", (64, 96), "RGB", seed)
    seed = add("plain/broken-graph.png", "")
    png(folder / "plain/broken-graph.png", {"prompt": '{"3": {"class_type": "KSampler", '}, seed)
    return prompts
