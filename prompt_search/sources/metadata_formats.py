"""Each generator's text format, parsed: the texts an image carries (image_metadata.py chooses which) in, raw fields
out (image_metadata.clean makes them the table's types). Pure functions.
  a1111     A1111/Forge: the prompt (lines), an optional `Negative prompt:` line, then a line of `Key: value, ...`
            (values JSON-quoted when they hold , or :)
  fooocus   Fooocus: a JSON object (scheme `fooocus`), or A1111's layout with the typed prompt in `Raw prompt` (`a1111`)
  invokeai  `invokeai_metadata` (3.x and later), `sd-metadata` (2.x), `Dream` (1.x, a command line)
  novelai   `Description` (the prompt) and `Comment` (JSON settings)
"""

import json
import re
import shlex

Fields = dict[str, object]
# A1111's own pattern for the `Key: value` pairs (modules/infotext_utils.py, re_param_code).
PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


class Malformed(ValueError):
    """Metadata of a known format that cannot be read; reason is counted in the rejects file."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def parse_a1111(text: str) -> Fields:
    """A1111's layout, by key."""
    return _a1111_fields(*_a1111_parts(text))


def _a1111_fields(prompt: str, negative: str, params: dict[str, str]) -> Fields:
    width, _, height = params.get("Size", "").partition("x")
    return {"prompt": prompt, "negative_prompt": negative, "num_steps": params.get("Steps"),
            "sampler": params.get("Sampler"), "cfg_scale": params.get("CFG scale"), "seed": params.get("Seed"),
            "width": width, "height": height, "model": params.get("Model"), "model_hash": params.get("Model hash")}


def _a1111_parts(text: str) -> tuple[str, str, dict[str, str]]:
    """The prompt, the negative prompt and the settings by key: the last line is the settings when it has three
    `Key: value` pairs or more."""
    lines = text.strip().replace("\r\n", "\n").split("\n")
    params = {}
    if len(PARAM.findall(lines[-1])) >= 3:
        params = {key.strip(): _unquote(value) for key, value in PARAM.findall(lines.pop())}
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line.removeprefix("Negative prompt:").strip()
        (negative if in_negative else prompt).append(line)
    return "\n".join(prompt).strip(), "\n".join(negative).strip(), params


def _unquote(value: str) -> str:
    """A value A1111 JSON-quoted because it holds , : or a line end; kept as it is if the quoting is broken."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(json.loads(value))
        except ValueError:
            pass
    return value


def parse_fooocus(parameters: str, scheme: str | None) -> Fields:
    """Fooocus (modules/meta_parser.py), by its `fooocus_scheme` (PNG) or EXIF MakerNote (JPEG, WebP): `fooocus`
    writes a JSON object, `a1111` A1111's layout. Without a scheme, or with another, what parses decides."""
    scheme = (scheme or "").strip().lower()
    data = json_object_or_none(parameters) if scheme != "a1111" else None
    if data is not None:
        return _fooocus_json(data)
    if scheme == "fooocus":
        raise Malformed("malformed", f"fooocus_scheme is fooocus but parameters is not a JSON object: "
                                     f"{parameters[:80]!r}")
    prompt, negative, params = _a1111_parts(parameters)
    # The prompt lines are the prompt as the styles expanded it; `Raw prompt` is what was typed (Fooocus loads it)
    return _a1111_fields(params.get("Raw prompt") or prompt, params.get("Raw negative prompt") or negative, params)


def _fooocus_json(data: dict) -> Fields:
    """The `fooocus` scheme: the prompt as typed (or, when only styles made it, the expanded `full_prompt`)."""
    width, height = ([*re.findall(r"\d+", str(data.get("resolution", ""))), None, None])[:2]  # "(1152, 896)"
    full_prompt = data.get("full_prompt")
    prompt = data.get("prompt") or (", ".join(map(str, full_prompt)) if isinstance(full_prompt, list) else None)
    return {"prompt": prompt, "negative_prompt": data.get("negative_prompt"), "num_steps": data.get("steps"),
            "sampler": data.get("sampler"), "cfg_scale": data.get("guidance_scale"), "seed": data.get("seed"),
            "width": width, "height": height, "model": data.get("base_model"),
            "model_hash": data.get("base_model_hash")}


def parse_invokeai(text: str) -> Fields:
    data = _json_object(text)
    model = data.get("model")
    name, model_hash = (model.get("name") or model.get("model_name"), model.get("hash")) if isinstance(model, dict) \
        else (model, None)
    return {"prompt": data.get("positive_prompt"), "negative_prompt": data.get("negative_prompt"),
            "num_steps": data.get("steps"), "sampler": data.get("scheduler"), "cfg_scale": data.get("cfg_scale"),
            "seed": data.get("seed"), "width": data.get("width"), "height": data.get("height"), "model": name,
            "model_hash": model_hash}


def parse_sd_metadata(text: str) -> Fields:
    """InvokeAI 2.x: the settings under `image`; its prompt a list of weighted prompts, the negative in [brackets]."""
    data = _json_object(text)
    image = data.get("image") if isinstance(data.get("image"), dict) else {}
    prompt = image.get("prompt")
    if isinstance(prompt, list):
        prompt = " ".join(str(part.get("prompt", "")) for part in prompt if isinstance(part, dict))
    positive, negative = _split_negative(str(prompt or ""))
    return {"prompt": positive, "negative_prompt": negative, "num_steps": image.get("steps"),
            "sampler": image.get("sampler"), "cfg_scale": image.get("cfg_scale"), "seed": image.get("seed"),
            "width": image.get("width"), "height": image.get("height"), "model": data.get("model_weights"),
            "model_hash": data.get("model_hash")}


DREAM_OPTIONS = {"-s": "num_steps", "-S": "seed", "-W": "width", "-H": "height", "-C": "cfg_scale", "-A": "sampler"}


def parse_dream(text: str) -> Fields:
    """InvokeAI 1.x: its command line, `"a prompt [negative]" -s 50 -S 42 -W 512 -H 512 -C 7.5 -A k_lms`."""
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise Malformed("malformed", str(error)) from None
    if not words:
        raise Malformed("malformed", "an empty command")
    fields: Fields = {DREAM_OPTIONS[flag]: value for flag, value in zip(words[1:], words[2:], strict=False)
                      if flag in DREAM_OPTIONS}
    fields["prompt"], fields["negative_prompt"] = _split_negative(words[0])
    return fields


def parse_novelai(description: str, comment: str, source: str = "") -> Fields:
    data = _json_object(comment)
    return {"prompt": description or data.get("prompt"), "negative_prompt": data.get("uc"),
            "num_steps": data.get("steps"), "sampler": data.get("sampler"), "cfg_scale": data.get("scale"),
            "seed": data.get("seed"), "width": data.get("width"), "height": data.get("height"), "model": source}


def _split_negative(prompt: str) -> tuple[str, str]:
    """InvokeAI's `a prompt [negative words]`: the text outside brackets, and inside them."""
    negative = " ".join(part.strip() for part in re.findall(r"\[([^\]]*)\]", prompt))
    return " ".join(re.sub(r"\[[^\]]*\]", " ", prompt).split()), negative


def _json_object(text: str) -> dict:
    data = json.loads(text)  # allows NaN, as the writers in Python produce it
    if not isinstance(data, dict):
        raise Malformed("malformed", f"a JSON {type(data).__name__}, not an object")
    return data


def json_object_or_none(text: str) -> dict | None:
    """text's JSON object, or None when it is not one. Nested too deep to read: RecursionError, as json raises."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
