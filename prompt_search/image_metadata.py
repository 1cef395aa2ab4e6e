"""The prompt and settings an image generator wrote into its files, from the texts read out of one image.

Pure functions: the texts (PNG text chunks by name, the EXIF UserComment's bytes, the .txt beside the image,
read by folder_metadata.py) in, fields out. Formats:
  a1111     A1111/Forge: `parameters`, the EXIF UserComment or the .txt: the prompt (lines), an optional
            `Negative prompt:` line, then a line of `Key: value, ...` (values JSON-quoted when they hold , or :)
  comfyui   `prompt`: the API graph (comfyui.py)
  invokeai  `invokeai_metadata` (3.x and later), `sd-metadata` (2.x), `Dream` (1.x, a command line)
  novelai   `Description` (the prompt) and `Comment` (JSON settings)
  fooocus   `parameters` with `fooocus_scheme`: JSON, or a1111's layout
An image carrying two formats keeps the fields of both, the preferred format's first.
"""

import json
import math
import re
import shlex
from collections.abc import Callable

from prompt_search.comfyui import parse_comfyui

TOOLS = ("a1111", "comfyui", "invokeai", "novelai", "fooocus")  # the formats, in the order they fill missing fields
INT32, INT64 = 1 << 31, 1 << 63
# field -> its type in the metadata table (folder_metadata.SCHEMA) and, for integers, the bound of its column
KINDS: dict[str, tuple[type, int]] = {
    "prompt": (str, 0), "negative_prompt": (str, 0), "width": (int, INT32), "height": (int, INT32),
    "seed": (int, INT64), "cfg_scale": (float, 0), "num_steps": (int, INT32), "sampler": (str, 0), "model": (str, 0),
    "model_hash": (str, 0),
}
A1111_TEXTS = ("parameters", "UserComment", ".txt")  # where the A1111 layout is found, the first present wins
USER_COMMENT_CODES = (b"UNICODE\0", b"ASCII\0\0\0", b"\0" * 8)  # EXIF's character codes; JIS is not seen in practice
# A1111's own pattern for the `Key: value` pairs (modules/infotext_utils.py, re_param_code).
PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
Fields = dict[str, object]
Problem = tuple[str, str]  # (reason, detail)


class Malformed(ValueError):
    """Metadata of a known format that cannot be read; reason is counted in the rejects file."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def parse_metadata(texts: dict[str, str | bytes], preferred: str = "a1111") -> tuple[Fields, list[Problem]]:
    """The fields of one image (every KINDS field, None when unknown, and `tool`), and what could not be read.

    Never raises on bad metadata: a format that cannot be read is a problem, and the other formats still count.
    """
    problems: list[Problem] = []
    if isinstance(texts.get("UserComment"), bytes):
        try:
            texts = {**texts, "UserComment": decode_user_comment(texts["UserComment"])}
        except Malformed as error:
            problems.append((error.reason, error.detail))
            texts = {key: value for key, value in texts.items() if key != "UserComment"}
    found: dict[str, Fields] = {}
    for tool, parse in _parsers(texts).items():
        try:
            fields, bad = clean(parse())
        except Malformed as error:
            problems.append((f"{tool}_{error.reason}", error.detail[:200]))
            continue
        except ValueError as error:  # json's JSONDecodeError, or comfyui's "not a graph"
            kind = "invalid_json" if isinstance(error, json.JSONDecodeError) else "malformed"
            problems.append((f"{tool}_{kind}", str(error)[:200]))
            continue
        found[tool] = fields
        problems += [(f"{tool}_bad_value", detail) for detail in bad]
    order = sorted(found, key=lambda tool: (tool != preferred, TOOLS.index(tool)))
    merged: Fields = {name: next((found[t][name] for t in order if found[t].get(name) not in (None, "")), None)
                      for name in KINDS}
    merged["prompt"] = merged["prompt"] or ""
    merged["tool"] = ",".join(order) or None
    return merged, problems


def _parsers(texts: dict[str, str]) -> dict[str, Callable[[], Fields]]:
    """The formats these texts hold, each with the call that parses it."""
    parsers: dict[str, Callable[[], Fields]] = {}
    a1111 = next((texts[key] for key in A1111_TEXTS if texts.get(key, "").strip()), None)
    if "fooocus_scheme" in texts or (a1111 or "").lstrip().startswith("{"):  # Fooocus's JSON scheme, in any of them
        parsers["fooocus"] = lambda: parse_fooocus(a1111 or "", texts.get("fooocus_scheme", "json"))
    elif a1111 is not None:
        parsers["a1111"] = lambda: parse_a1111(a1111)
    if "prompt" in texts:
        parsers["comfyui"] = lambda: parse_comfyui(texts["prompt"])
    invokeai = {"invokeai_metadata": parse_invokeai, "sd-metadata": parse_sd_metadata, "Dream": parse_dream}
    key = next((key for key in invokeai if key in texts), None)
    if key:
        parsers["invokeai"] = lambda: invokeai[key](texts[key])
    if "Comment" in texts and ("Description" in texts or texts.get("Software", "").startswith("NovelAI")):
        parsers["novelai"] = lambda: parse_novelai(texts.get("Description", ""), texts["Comment"],
                                                   texts.get("Source", ""))
    return parsers


def clean(raw: Fields) -> tuple[Fields, list[str]]:
    """raw's KINDS fields as their column's type (numbers written as text become numbers); a value that is not
    one (a seed of "abc", a NaN scale, a width over int32) is dropped and described."""
    fields, bad = {}, []
    for name, (kind, bound) in KINDS.items():
        value = raw.get(name)
        if value is None or value == "":
            continue
        try:
            if kind is str:
                fields[name] = str(value).strip()
                continue
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number) or (kind is int and (number != int(number) or abs(number) >= bound)):
                raise ValueError
            fields[name] = int(number) if kind is int else number
        except (TypeError, ValueError):
            bad.append(f"{name}={str(value)[:80]!r}")
    return fields, bad


def decode_user_comment(raw: bytes) -> str:
    """The text of an EXIF UserComment: 8 bytes naming the encoding, then the text.

    UNICODE means UTF-16 of either byte order (piexif, which A1111 uses, writes big-endian; little-endian is
    seen too, and some writers put UTF-8 after UNICODE): a BOM decides, else which bytes of the first characters
    are zero (ASCII characters are most prompts' first), else UTF-8.
    """
    code, payload = raw[:8], raw[8:]
    if code not in USER_COMMENT_CODES:
        code, payload = b"\0" * 8, raw  # no code at all: some writers store the bare text
    encoding = "utf-8"
    if code == b"UNICODE\0":
        head = payload[:64]
        if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
            encoding = "utf-16"
        elif head[0::2].count(0) > head[1::2].count(0):
            encoding = "utf-16-be"
        elif head[1::2].count(0) > head[0::2].count(0):
            encoding = "utf-16-le"
    try:
        return payload.decode(encoding).rstrip("\0")
    except UnicodeDecodeError as error:
        raise Malformed("undecodable_user_comment", f"{encoding}: {error}") from None


def parse_a1111(text: str) -> Fields:
    """A1111's layout, by key: the last line is the settings when it has three `Key: value` pairs or more."""
    lines = text.strip().replace("\r\n", "\n").split("\n")
    params = {}
    if len(PARAM.findall(lines[-1])) >= 3:
        params = {key.strip(): _unquote(value) for key, value in PARAM.findall(lines.pop())}
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line.removeprefix("Negative prompt:").strip()
        (negative if in_negative else prompt).append(line)
    width, _, height = params.get("Size", "").partition("x")
    return {"prompt": "\n".join(prompt).strip(), "negative_prompt": "\n".join(negative).strip(),
            "num_steps": params.get("Steps"), "sampler": params.get("Sampler"), "cfg_scale": params.get("CFG scale"),
            "seed": params.get("Seed"), "width": width, "height": height, "model": params.get("Model"),
            "model_hash": params.get("Model hash")}


def _unquote(value: str) -> str:
    """A value A1111 JSON-quoted because it holds , : or a line end; kept as it is if the quoting is broken."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(json.loads(value))
        except ValueError:
            pass
    return value


def parse_fooocus(parameters: str, scheme: str) -> Fields:
    if scheme.strip().lower() != "json":
        return parse_a1111(parameters)
    data = _json_object(parameters)
    width, height = ([*re.findall(r"\d+", str(data.get("resolution", ""))), None, None])[:2]  # "(1152, 896)"
    return {"prompt": data.get("prompt"), "negative_prompt": data.get("negative_prompt"),
            "num_steps": data.get("steps"), "sampler": data.get("sampler"), "cfg_scale": data.get("guidance_scale"),
            "seed": data.get("seed"), "width": width, "height": height, "model": data.get("base_model"),
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
