"""ComfyUI's API graph (PNG chunk `prompt`, WebP EXIF `prompt:{json}`) to a generation's fields.

The graph maps node id -> {"class_type", "inputs"}; an input holds a value or a link [node id, output].
The sampler is the one whose output reaches the image-saving node, found by following the graph back from it
(through VAE decode, upscalers, latent nodes) to the first sampler on each path: a hires fix or a refiner has
several samplers, and the last one makes the saved image. ComfyUI writes the same graph into every image it saves,
so a graph that saves the output of several samplers (a hires fix saving both passes, a grid of variants) does not
say which one this file is: then the sampler downstream of the others (or the last) is taken and `tool` says
`comfyui:ambiguous`. The prompt is found by following that sampler's `positive` input back through whatever sits
between (FluxGuidance, conditioning combiners and areas, ControlNet) to the text encoders, and each setting by
following the input that carries it (a LoRA loader between checkpoint and sampler, say); the seed of a sampler that
adds no noise (an SDXL refiner) is that of the sampler before it.
Pure: text in, fields out; a graph that is not one raises ValueError.
"""

import json
import re

TEXT_INPUTS = ("text", "t5xxl", "text_g", "clip_l", "text_l")  # CLIPTextEncode; Flux's; SDXL's (g and l often equal)
STRING_INPUTS = ("text", "string", "value", "prompt", "seed", "noise_seed", "int", "float")  # of nodes giving a value
# (field, inputs that hold it, inputs to follow from the sampler until one is found)
SETTINGS = (
    ("seed", ("seed", "noise_seed"), ("noise",)),
    ("num_steps", ("steps",), ("sigmas",)),
    ("cfg_scale", ("cfg",), ("guider",)),
    ("sampler", ("sampler_name",), ("sampler",)),
    ("width", ("width",), ("latent_image",)),
    ("height", ("height",), ("latent_image",)),
    ("model", ("ckpt_name", "unet_name", "model_name"), ("model", "guider")),
)
LATENT_INPUTS = ("latent_image", "samples", "samples_to")  # a latent's way back: a sampler's, a decode's, a composite's
IMAGE_INPUTS = ("images", "image")  # what an image saver takes
MAX_RANKED = 64  # samplers ranked by how many of the others come before them; a graph with more has no clear last
Nodes = dict[str, dict]


def parse_comfyui(text: str) -> dict[str, object]:
    """The fields of a ComfyUI API graph: prompt, negative_prompt and the sampler's settings."""
    graph = json.loads(text)  # Python's json reads the NaN ComfyUI writes for unset floats, where strict parsers fail
    if not isinstance(graph, dict) or not all(isinstance(node, dict) for node in graph.values()):
        raise ValueError("not a ComfyUI node graph")
    nodes = {str(key): node for key, node in graph.items()}
    order = sorted(nodes, key=_natural)
    sampler, ambiguous = _saved_sampler(nodes, order)
    fields: dict[str, object] = {"tool": "comfyui:ambiguous" if ambiguous else "comfyui"}
    if sampler is not None:
        fields["prompt"] = "\n".join(_distinct(_texts(nodes, sampler, "positive", set(), False)))
        fields["negative_prompt"] = "\n".join(_distinct(_texts(nodes, sampler, "negative", set(), False)))
        for name, keys, via in SETTINGS:
            source = _noise_source(nodes, sampler) if name == "seed" else sampler
            fields[name] = _setting(nodes, source, keys, via, set())
    if not fields.get("prompt"):  # no sampler, or one whose prompt comes from a node this does not know
        encoders = [key for key in order if "TextEncode" in str(nodes[key].get("class_type", ""))]
        fields["prompt"] = "\n".join(_distinct(t for key in encoders for t in _encoder_texts(nodes, key)))
    return fields


def _saved_sampler(nodes: Nodes, order: list[str]) -> tuple[str | None, bool]:
    """The sampler whose output the graph saves, and whether the graph leaves that open (several candidates).
    Savers are the nodes named Save... with an image in (not SaveLatent's latent); a graph without one is taken for
    a preview (PreviewImage); a graph without either, or whose savers no sampler reaches, has every sampler as a
    candidate."""
    savers = [key for key in order if "Save" in _class(nodes, key) and _takes_an_image(nodes, key)] or \
        [key for key in order if "Preview" in _class(nodes, key)]
    samplers = [found for found in _before(nodes, savers, stop_at_samplers=True) if _is_sampler(_inputs(nodes, found))]
    samplers = samplers or [key for key in order if _is_sampler(_inputs(nodes, key))]
    if not samplers:
        return None, False
    return _most_downstream(nodes, order, samplers), len(samplers) > 1


def _takes_an_image(nodes: Nodes, key: str) -> bool:
    return any(_is_link(_inputs(nodes, key).get(name)) for name in IMAGE_INPUTS)


def _noise_source(nodes: Nodes, sampler: str) -> str:
    """The sampler whose seed made sampler's noise: itself, or, when it adds none (KSamplerAdvanced's add_noise
    disable: a refiner, the second half of a split schedule), the sampler its latent comes from, followed along the
    latent's path (a latent composite's base)."""
    key, seen = sampler, {sampler}
    while _inputs(nodes, key).get("add_noise") in ("disable", False):
        while True:
            inputs = _inputs(nodes, key)
            link = next((inputs[name] for name in LATENT_INPUTS if _is_link(inputs.get(name))), None)
            if link is None or str(link[0]) in seen:
                return sampler
            key = str(link[0])
            seen.add(key)
            if _is_sampler(_inputs(nodes, key)):
                break
    return key


def _most_downstream(nodes: Nodes, order: list[str], samplers: list[str]) -> str:
    """The sampler with the most of the others before it (a hires fix's second pass over its first); ties, or more
    candidates than are worth ranking (a hostile graph): the last."""
    if len(samplers) > MAX_RANKED:
        return max(samplers, key=order.index)

    def upstream(key: str) -> int:
        return len(set(_before(nodes, [key], stop_at_samplers=False)) & set(samplers))
    return max(samplers, key=lambda key: (upstream(key), order.index(key)))


def _before(nodes: Nodes, keys: list[str], stop_at_samplers: bool) -> list[str]:
    """The nodes whose output reaches any of keys (not those themselves), walked without recursion (a graph can
    be a long chain); with stop_at_samplers, not past a sampler: a sampler's output reaches a saver through VAE
    decodes, upscalers, latent composites and the like, and the samplers met first are the ones saved."""
    found, seen, stack = [], set(keys), list(keys)
    while stack:
        for value in _inputs(nodes, stack.pop()).values():
            if _is_link(value) and (source := str(value[0])) not in seen:
                seen.add(source)
                found.append(source)
                if not (stop_at_samplers and _is_sampler(_inputs(nodes, source))):
                    stack.append(source)
    return found


def _class(nodes: Nodes, key: str) -> str:
    return str(nodes[key].get("class_type", "")) if key in nodes else ""


def _is_sampler(inputs: dict) -> bool:
    """KSampler, KSamplerAdvanced, SamplerCustom(Advanced): a latent in and a prompt (or a guider holding one);
    ControlNet nodes have positive and negative inputs too, but no latent."""
    return "latent_image" in inputs and ("positive" in inputs or "guider" in inputs)


def _texts(nodes: Nodes, key: str, side: str, seen: set[str], entered: bool) -> list[str]:
    """The prompt texts reaching node key's `side` input ("positive" or "negative").

    From the sampler, `side` and a guider are followed; once past a `side` input (entered), every conditioning
    input too (combiners have conditioning_1, conditioning_to...). Before, a guider's `conditioning` is
    followed for the positive side only: BasicGuider's one conditioning is positive.
    """
    inputs = _first_visit(nodes, key, seen)
    if inputs is None:
        return []
    if any(name in inputs for name in TEXT_INPUTS):
        return _encoder_texts(nodes, key)
    found = []
    for name, value in inputs.items():
        follow = name in (side, "guider") or (name.startswith("conditioning") and (entered or side == "positive"))
        if follow and _is_link(value):
            found += _texts(nodes, str(value[0]), side, seen, entered or name == side)
    return found


def _encoder_texts(nodes: Nodes, key: str) -> list[str]:
    inputs = _inputs(nodes, key)
    texts = (_value(nodes, inputs[name], set()) for name in TEXT_INPUTS if name in inputs)
    return [text for text in texts if isinstance(text, str) and text.strip()]


def _setting(nodes: Nodes, key: str, keys: tuple[str, ...], via: tuple[str, ...], seen: set[str]) -> object:
    """The first of keys among node key's inputs, or those of the nodes its `via` inputs link to, depth first."""
    inputs = _first_visit(nodes, key, seen)
    if inputs is None:
        return None
    for name in keys:
        if name in inputs and (value := _value(nodes, inputs[name], set())) is not None:
            return value
    for name in via:
        if _is_link(inputs.get(name)) and (value := _setting(nodes, str(inputs[name][0]), keys, via, seen)) is not None:
            return value
    return None


def _value(nodes: Nodes, value: object, seen: set[str]) -> object:
    """A plain input value, or the value of the node a link points at (a text or number node), else None."""
    if not _is_link(value):
        return value if isinstance(value, str | int | float) else None
    inputs = _first_visit(nodes, str(value[0]), seen)
    if inputs is None:
        return None
    return next((found for name in STRING_INPUTS if name in inputs
                 and (found := _value(nodes, inputs[name], seen)) is not None), None)


def _first_visit(nodes: Nodes, key: str, seen: set[str]) -> dict | None:
    """Node key's inputs the first time a walk comes to it, None after: links may run in a circle."""
    if key in seen:
        return None
    seen.add(key)
    return _inputs(nodes, key)


def _inputs(nodes: Nodes, key: str) -> dict:
    inputs = nodes.get(key, {}).get("inputs")
    return inputs if isinstance(inputs, dict) else {}


def _is_link(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str | int) and isinstance(value[1], int)


def _distinct(texts) -> list[str]:
    """Each text once, stripped, in order: SDXL's text_g and text_l, or Flux's clip_l and t5xxl, are often equal."""
    return list(dict.fromkeys(text.strip() for text in texts))


def _natural(key: str) -> list:
    """Node ids in number order ("9" before "10"); group nodes have ids like "12:3"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]
