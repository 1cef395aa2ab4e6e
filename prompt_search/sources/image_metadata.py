"""The prompt and settings an image generator wrote into its files, from the texts read out of one image.

Pure functions: the texts (PNG text chunks by name, the EXIF UserComment's bytes, the .txt beside the image, a
stealth payload from the pixels: read by folder_metadata.py) in, fields out. Which formats the texts hold is decided
here, each format parsed in metadata_formats.py (A1111/Forge, Fooocus, InvokeAI, NovelAI) or comfyui.py:
  a1111     `parameters`, the EXIF UserComment or the .txt, unless it parses as a JSON object (Fooocus's)
  comfyui   `prompt`: the API graph
  invokeai  `invokeai_metadata`, `sd-metadata` or `Dream`
  novelai   `Comment` with `Description` or Software NovelAI (also as the JSON object of a stealth payload)
  fooocus   `parameters` (or the UserComment) with `fooocus_scheme` (or the EXIF MakerNote), or holding a JSON object
An image carrying two formats keeps the fields of both, the preferred format's first.
"""

import json
import math
import zlib
from collections.abc import Callable

from prompt_search.sources.comfyui import parse_comfyui
from prompt_search.sources.metadata_formats import (
    Fields,
    Malformed,
    json_object_or_none,
    parse_a1111,
    parse_dream,
    parse_fooocus,
    parse_invokeai,
    parse_novelai,
    parse_sd_metadata,
)
from prompt_search.sources.stealth_pnginfo import SIGNATURES, decode_payload

TOOLS = ("a1111", "comfyui", "invokeai", "novelai", "fooocus")  # the formats, in the order they fill missing fields
INT32 = 1 << 31
# field -> its type in the metadata table (folder_metadata.SCHEMA) and, for integers, the values it may take: a seed
# is any unsigned 64-bit number (ComfyUI and Fooocus draw them up to 2**64 - 1), kept exact
KINDS: dict[str, tuple[type, range | None]] = {
    "prompt": (str, None), "negative_prompt": (str, None), "width": (int, range(1 - INT32, INT32)),
    "height": (int, range(1 - INT32, INT32)), "seed": (int, range(1 << 64)), "cfg_scale": (float, None),
    "num_steps": (int, range(1 - INT32, INT32)), "sampler": (str, None), "model": (str, None),
    "model_hash": (str, None),
}
A1111_TEXTS = ("parameters", "UserComment", ".txt")  # where the A1111 layout is found, the first present wins
# The texts that name a format: an image holding one is not searched for metadata in its pixels.
FORMAT_TEXTS = (*A1111_TEXTS, "prompt", "invokeai_metadata", "sd-metadata", "Dream", "Comment")
FOOOCUS_SCHEMES = ("fooocus", "a1111")  # the values of Fooocus's fooocus_scheme (modules/flags.py, MetadataScheme)
STEALTH_TEXTS = tuple(signature.decode() for signature in SIGNATURES)  # folder_metadata puts the payload under these
USER_COMMENT_CODES = (b"UNICODE\0", b"ASCII\0\0\0", b"\0" * 8)  # EXIF's character codes; JIS is not seen in practice
Problem = tuple[str, str]  # (reason, detail)


def parse_metadata(texts: dict[str, str | bytes], preferred: str = "a1111") -> tuple[Fields, list[Problem]]:
    """The fields of one image (every KINDS field, None when unknown, and `tool`), and what could not be read.

    Never raises on bad metadata: a format that cannot be read is a problem, and the other formats still count. A
    format found without a prompt anywhere is a problem too (`no_prompt`), so that no image loses its prompt unsaid.
    """
    problems: list[Problem] = []
    texts = _decoded(texts, problems)
    found: dict[str, Fields] = {}
    labels: dict[str, str] = {}  # the format as `tool` shows it: comfyui:ambiguous when the graph leaves it open
    for tool, parse in _parsers(texts).items():
        try:
            raw = parse()
            fields, bad = clean(raw)
        except Malformed as error:
            problems.append((f"{tool}_{error.reason}", error.detail[:200]))
            continue
        except RecursionError:  # json's parser and the graph's walk recurse: a hostile file must not stop the step
            problems.append((f"{tool}_too_deeply_nested", "JSON or a node graph nested deeper than can be read"))
            continue
        except ValueError as error:  # json's JSONDecodeError, or comfyui's "not a graph"
            kind = "invalid_json" if isinstance(error, json.JSONDecodeError) else "malformed"
            problems.append((f"{tool}_{kind}", str(error)[:200]))
            continue
        found[tool], labels[tool] = fields, str(raw.get("tool") or tool)
        problems += [(f"{tool}_bad_value", detail) for detail in bad]
    order = sorted(found, key=lambda tool: (tool != preferred, TOOLS.index(tool)))
    merged: Fields = {name: next((found[t][name] for t in order if found[t].get(name) not in (None, "")), None)
                      for name in KINDS}
    merged["prompt"] = merged["prompt"] or ""
    merged["tool"] = ",".join(labels[tool] for tool in order) or None
    if order and not merged["prompt"]:
        problems.append(("no_prompt", f"{merged['tool']} metadata without a prompt"))
    return merged, problems


def _decoded(texts: dict[str, str | bytes], problems: list[Problem]) -> dict[str, str]:
    """texts with the EXIF UserComment's bytes as text, and a stealth payload as the texts it holds."""
    texts = dict(texts)
    if isinstance(texts.get("UserComment"), bytes):
        try:
            texts["UserComment"] = decode_user_comment(texts["UserComment"])
        except Malformed as error:
            problems.append((error.reason, error.detail))
            del texts["UserComment"]
    for signature in STEALTH_TEXTS:
        if signature in texts:
            try:
                hidden = stealth_texts(signature, texts.pop(signature))
            except (ValueError, OSError, EOFError, zlib.error, RecursionError) as error:  # gzip's, json's
                problems.append(("stealth_malformed", f"{signature}: {type(error).__name__}: {error}"[:200]))
            else:
                texts = {**hidden, **texts}
    return texts


def stealth_texts(signature: str, stored: bytes) -> dict[str, str]:
    """The texts a stealth payload holds: NovelAI's text chunks (a JSON object holding `Comment`), else A1111's
    `parameters`. Raises what decode_payload raises on one that cannot be read."""
    text = decode_payload(signature, stored)
    chunks = json_object_or_none(text)
    if chunks is not None and "Comment" in chunks:
        return {str(key): value if isinstance(value, str) else json.dumps(value) for key, value in chunks.items()}
    return {"parameters": text}


def _parsers(texts: dict[str, str]) -> dict[str, Callable[[], Fields]]:
    """The formats these texts hold, each with the call that parses it. A1111's text and Fooocus's JSON are told
    apart by what parses, not by the first character: A1111 prompts often start with { (prompt weighting)."""
    parsers: dict[str, Callable[[], Fields]] = {}
    a1111 = next((texts[key] for key in A1111_TEXTS if texts.get(key, "").strip()), None)
    scheme = texts.get("fooocus_scheme")
    if scheme is not None or (a1111 is not None and _is_json_object(a1111)):
        parsers["fooocus"] = lambda: parse_fooocus(a1111 or "", scheme)
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


def _is_json_object(text: str) -> bool:
    try:
        return json_object_or_none(text) is not None
    except RecursionError:  # an object nested too deep: Fooocus's parser counts it
        return True


def clean(raw: Fields) -> tuple[Fields, list[str]]:
    """raw's KINDS fields as their column's type (numbers written as text become numbers, integers exactly); a
    value that is not one (a seed of "abc" or -1, a NaN scale, a width over int32) is dropped and described."""
    fields, bad = {}, []
    for name, (kind, values) in KINDS.items():
        value = raw.get(name)
        if value is None or value == "":
            continue
        try:
            if kind is str:
                fields[name] = str(value).strip()
            elif kind is int:
                fields[name] = _integer(value, values)
            else:
                fields[name] = _finite(value)
        except (TypeError, ValueError, OverflowError):
            bad.append(f"{name}={str(value)[:80]!r}")
    return fields, bad


def _integer(value: object, values: range) -> int:
    """value as an exact integer (through int, not float: a seed above 2**53 keeps every digit) within values."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            value = float(value)  # "20.0"
    if isinstance(value, float):
        if value != int(value):  # NaN and infinities raise in int()
            raise ValueError
        value = int(value)
    if not isinstance(value, int) or value not in values:
        raise ValueError
    return value


def _finite(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError
    number = float(value)
    if not math.isfinite(number):
        raise ValueError
    return number


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
