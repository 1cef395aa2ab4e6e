"""The two kinds of CLIP that MODEL names, behind one interface: OpenAI's (the clip package) and OpenCLIP's.

    ViT-B/32                                 an OpenAI model name, or the path of an OpenAI CLIP checkpoint
    open_clip:ViT-B-32/laion2b_s34b_b79k     OpenCLIP architecture / pretrained tag (downloaded to MODEL_DIR)
    open_clip:ViT-B-32//data/my-b32.pt       OpenCLIP architecture / path of a checkpoint of it
    open_clip:configs/my-arch.json/ckpt.pt   the architecture may be a path to an OpenCLIP model config .json

Only the OpenCLIP models the rest of the pipeline can follow load: CLIP's BPE tokenizer (ported without
torch in tokenizer.py), a causal text transformer read at the end token (the ONNX text graph cuts token
rows there), and a preprocess that resizes the shorter side and crops the centre (pixels.to_pixels).
Any other is refused when loaded, before anything is embedded, saying which of these it breaks.
open_clip is imported where an OpenCLIP model is loaded: OpenAI's models load without it.
"""

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import clip
import torch

from prompt_search.errors import UserError, error_line
from prompt_search.models.names import CONFIG_SUFFIX, split_open_clip
from prompt_search.models.openai_clip import load_clip
from prompt_search.models.tokenizer import OPEN_CLIP_SPECIAL_TOKENS, TextSpec
from prompt_search.pixels import PixelSpec

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")  # what makes PRETRAINED a file rather than a tag


@dataclass
class Clip:
    """A loaded CLIP and what the steps need to feed it."""

    model: "torch.nn.Module"  # encode_image(pixels), encode_text(tokens); OpenAI's and OpenCLIP's share these names
    preprocess: Callable  # PIL image -> pixel tensor: the model's own transform
    tokenize: Callable[[list[str]], "torch.Tensor"]  # rows of context_length tokens, long prompts truncated
    text: TextSpec  # the same two, without torch
    pixels: PixelSpec

    @property
    def dtype(self) -> "torch.dtype":
        return next(self.model.visual.parameters()).dtype

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        return self.model.visual.output_dim


def load(name: str, device: str, model_dir: str) -> Clip:
    """The model MODEL names, on device (fp16 on a GPU, fp32 on the CPU), or a UserError saying why not."""
    found = split_open_clip(name)
    if found:
        return _load_open_clip(name, *found, device, os.path.expanduser(model_dir))
    model, preprocess = load_clip(name, device, model_dir)
    return Clip(model, preprocess, partial(clip.tokenize, truncate=True), TextSpec(),
                PixelSpec(size=model.visual.input_resolution))


def _load_open_clip(name: str, arch: str, pretrained: str, device: str, model_dir: str) -> Clip:
    import open_clip

    if arch.endswith(CONFIG_SUFFIX):
        arch = register_config(name, arch)
    if arch not in open_clip.list_models():
        raise UserError(f"--MODEL={name}: {arch!r} is neither an OpenCLIP architecture (ViT-B-32, ViT-B-32-256, "
                        f"ViT-B-16, ...: open_clip.list_models()) nor a model config {CONFIG_SUFFIX} file")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags and not os.path.isfile(pretrained):
        if "/" in pretrained or os.sep in pretrained or pretrained.endswith(CHECKPOINT_SUFFIXES):
            raise UserError(f"--MODEL={name}: checkpoint file {pretrained} not found")
        raise UserError(f"--MODEL={name}: {pretrained!r} is neither a pretrained tag of {arch} "
                        f"({', '.join(tags) or 'it has none'}) nor an existing checkpoint file")
    reason = _unsupported(open_clip.get_model_config(arch), arch)
    if reason:
        raise UserError(f"--MODEL={name} is not supported: {reason}")
    if pretrained in tags:
        _download(name, arch, pretrained, model_dir)
    precision = "fp32" if device == "cpu" else "fp16"
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device,
                                                                      precision=precision, cache_dir=model_dir)
    except Exception as error:  # open_clip and torch.load raise many kinds for a file that is not the checkpoint
        raise UserError(f"--MODEL={name}: {pretrained} is not a checkpoint of {arch} ({error_line(error)})") from None
    config = model.visual.preprocess_cfg
    if config["resize_mode"] != "shortest" or config["interpolation"] not in ("bicubic", "bilinear"):
        raise UserError(f"--MODEL={name} is not supported: its preprocess ({config['resize_mode']} resize, "
                        f"{config['interpolation']}) is not the shorter-side resize and centre crop of to_pixels")
    size = config["size"]
    pixels = PixelSpec(size if isinstance(size, int) else size[0], tuple(config["mean"]), tuple(config["std"]),
                       config["interpolation"])
    tokenizer = open_clip.get_tokenizer(arch)
    text = TextSpec(OPEN_CLIP_SPECIAL_TOKENS, tokenizer.context_length)
    return Clip(model.eval(), preprocess, tokenizer, text, pixels)


_CONFIG_FILES: dict[str, str] = {}  # architecture -> the config file this process registered under that name


def register_config(name: str, path: str) -> str:
    """Make the model config file at path an architecture of open_clip's registry, named by its file's stem."""
    import open_clip

    stem, path = os.path.basename(path).removesuffix(CONFIG_SUFFIX), os.path.abspath(path)
    if not os.path.isfile(path):
        raise UserError(f"--MODEL={name}: model config {path} not found")
    if _CONFIG_FILES.get(stem, path) != path or (stem not in _CONFIG_FILES and stem in open_clip.list_models()):
        raise UserError(f"--MODEL={name}: an architecture named {stem} is known already: rename {path}")
    open_clip.add_model_config(path)  # again when loaded again: open_clip then reads the file again
    if stem not in open_clip.list_models():
        raise UserError(f"--MODEL={name}: {path} is not an OpenCLIP model config (embed_dim, vision_cfg, text_cfg)")
    _CONFIG_FILES[stem] = path
    return stem


# OpenCLIP text settings the ONNX text graph follows; any other set away from its default is refused.
TEXT_SETTINGS_FOLLOWED = {"context_length", "width", "heads", "layers", "mlp_ratio", "final_ln_after_pool",
                          "norm_kwargs", "output_tokens"}


def _unsupported(config: dict, arch: str) -> str:
    """Why the pipeline cannot follow this model config, or "" when it can."""
    from dataclasses import fields

    from open_clip.model import CLIPTextCfg

    text = config.get("text_cfg", {})
    if text.get("hf_tokenizer_name") or text.get("hf_model_name") or "siglip" in arch.lower():
        return f"{arch}'s tokenizer is not CLIP's BPE, the only one the query reimplements without torch"
    if text.get("tokenizer_kwargs"):
        return f"{arch}'s tokenizer is CLIP's BPE with other options ({text['tokenizer_kwargs']})"
    if config.get("custom_text") or "multimodal_cfg" in config:
        return f"{arch}'s text tower is not CLIP's text transformer"
    if text.get("no_causal_mask") or text.get("pool_type", "argmax") != "argmax":
        return (f"{arch}'s text transformer is not causal and read at the end token (no_causal_mask "
                f"{text.get('no_causal_mask', False)}, pool_type {text.get('pool_type', 'argmax')}): the ONNX text "
                "encoder cuts token rows after the end token, which only such a model allows")
    defaults = {field.name: field.default for field in fields(CLIPTextCfg)}
    changed = sorted(key for key, value in text.items()
                     if key not in TEXT_SETTINGS_FOLLOWED and value != defaults.get(key, value))
    if changed:
        return f"{arch}'s text transformer sets {', '.join(changed)}, which the ONNX text graph does not build"
    return ""


def _download(name: str, arch: str, tag: str, model_dir: str) -> None:
    """Fetch the tagged weights into model_dir as open_clip does (or find them there), or say what to get by hand."""
    import open_clip

    config = open_clip.get_pretrained_cfg(arch, tag)
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # not a warning for each of its retries when offline: the error says it all
    try:
        open_clip.download_pretrained(config, cache_dir=model_dir)
    except Exception as error:  # huggingface_hub and urllib raise many kinds when offline
        if config.get("hf_hub"):  # "org/repo/" or "org/repo/file"; open_clip's default file when none is named
            repo, file = os.path.split(config["hf_hub"])
            source = f"https://huggingface.co/{repo}/resolve/main/{file or 'open_clip_pytorch_model.bin'}"
        else:
            source = config.get("url", "")
        raise UserError(
            f"OpenCLIP weights for {arch}/{tag} are not in {model_dir} and could not be downloaded from {source} "
            f"({error_line(error)}). Download that file and set --MODEL=open_clip:{arch}//path/to/it, "
            "or run once where it can be downloaded") from None
    finally:
        hub_logger.setLevel(level)
