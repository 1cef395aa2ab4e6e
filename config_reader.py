"""What every top-level script reads first: the constants of config.py with --NAME=value overrides, each checked
against what its setting may hold. The scripts build each step's settings object from what load_config returns
(prompt_search.settings); nothing in the package reads config.py."""

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace

import config
from prompt_search.errors import UserError
from prompt_search.sources.image_metadata import TOOLS
from prompt_search.storage import is_url


@dataclass(frozen=True)
class Allowed:
    """The values a setting may take, and how an error message says so."""

    accepts: Callable[[object], bool]
    says: str


def _number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def at_least(low: float) -> Allowed:
    return Allowed(lambda v: _number(v) and v >= low, f"{low} or more")


def more_than(low: float) -> Allowed:
    return Allowed(lambda v: _number(v) and v > low, f"more than {low}")


def minus_one_or_at_least(low: int, meaning: str) -> Allowed:
    return Allowed(lambda v: _number(v) and (v == -1 or v >= low), f"-1 ({meaning}) or {low} or more")


def one_of(*choices: str) -> Allowed:
    return Allowed(lambda v: v in choices, "one of " + ", ".join(map(repr, choices)))


def _memory(value: object) -> bool:
    """A memory size as autofaiss reads it (autofaiss.utils.cast.cast_memory_to_bytes), and not zero."""
    found = type(value) is str and re.fullmatch(r"(\d*\.\d+|\d+)([KMGTPEZ]B?|B)", value, re.IGNORECASE)
    return bool(found) and float(found.group(1)) > 0


def _token(value: object) -> bool:
    """SERVE_TOKEN: none, or one long enough that guessing it at the server's rate limit is hopeless."""
    return type(value) is str and (value == "" or len(value) >= 16 and value.isprintable() and value.strip() == value)


_MEMORY = Allowed(_memory, 'a size like "4G", "512MB" or "1.5GB"')
_SHA256 = Allowed(lambda v: type(v) is str and re.fullmatch(r"[0-9a-f]{64}", v) is not None, "64 lower-case hex digits")

# What each setting of config.py may hold, checked by load_config for config.py's values and the overrides alike.
# tests/test_config.py checks that every number setting has an entry.
ALLOWED: dict[str, Allowed] = {
    "CSV_SHA256": _SHA256,
    "DISTRIBUTOR": one_of("local", "pyspark"),
    "LINK_WORKERS": minus_one_or_at_least(1, "one per CPU core"),
    "IMAGE_SIZE": at_least(1),
    "PREFERRED_METADATA": one_of(*TOOLS),
    "RESIZE_MODE": one_of("keep_ratio", "no", "border", "center_crop", "keep_ratio_largest"),  # img2dataset's
    "DOWNLOAD_THREADS": at_least(1),
    "DOWNLOAD_PROCESSES": at_least(1),
    "DOWNLOAD_TIMEOUT": at_least(1),
    "DOWNLOAD_RETRIES": at_least(0),
    "OUTPUT_FORMAT": one_of("files", "webdataset", "parquet", "tfrecord", "dummy"),  # img2dataset's
    "BATCH_SIZE": at_least(1),
    "NUM_WORKERS": minus_one_or_at_least(0, "one per CPU core"),
    "DECODE": one_of("", "cpu", "gpu"),
    "SEARCH_MODE": one_of("hybrid", "semantic", "keyword"),
    "SORT": one_of("relevance", "adherence", "aesthetic", "date"),
    "GROUP": one_of("none", "prompt"),
    "MAX_INDEX_MEMORY": _MEMORY,
    "CURRENT_MEMORY_AVAILABLE": _MEMORY,
    "MAX_INDEX_QUERY_TIME_MS": more_than(0),
    "INDEX_RECALL": Allowed(lambda v: _number(v) and 0 < v <= 1, "more than 0 and at most 1"),
    "INPUT_IMG_SHA256": _SHA256,
    "NUM_RESULTS": at_least(1),
    "DEDUPE_THRESHOLD": Allowed(lambda v: _number(v) and 0 < v <= 1, "more than 0 and at most 1"),
    "QUERY_THREADS": at_least(0),
    "SERVE_PORT": Allowed(lambda v: type(v) is int and 0 <= v <= 65535, "a port from 0 (a free one) to 65535"),
    "MAX_UPLOAD_MB": more_than(0),
    "MAX_NUM_RESULTS": at_least(1),
    "MAX_NEGATIVES": Allowed(lambda v: type(v) is int and v >= 0, "a whole number, 0 or more"),
    "MAX_DECODE_PIXELS": Allowed(lambda v: type(v) is int and v >= 1, "a whole number of pixels, 1 or more"),
    "DECODE_SLOTS": Allowed(lambda v: type(v) is int and v >= 1, "a whole number, 1 or more"),
    "UPLOAD_TIMEOUT": Allowed(lambda v: _number(v) and 0 < v < math.inf, "a number of seconds, more than 0"),
    "SERVE_TOKEN": Allowed(_token, '"" (no login) or at least 16 printable characters, no space at either end'),
    "SERVE_URL": Allowed(lambda v: type(v) is str and re.fullmatch(r"(https?://[^/?#\s]+(/[^?#\s]*)?)?", v) is not None,
                         '"" or an http(s) URL without query, like "https://search.example"'),
    "CORS_ORIGINS": Allowed(lambda v: type(v) is str and all(re.fullmatch(r"\*|https?://[^/?#\s]+", o.strip())
                                                             for o in v.split(",") if v),
                            '"" (none), "*" (any) or origins like "http://127.0.0.1:8080", separated by commas'),
    "EXPORT_INDEX": one_of("images", "prompts"),
    "EXPORT_QUERY": one_of("text", "image"),
    "MAX_EXPORT": Allowed(lambda v: type(v) is int and 1 <= v <= 1000, "a whole number from 1 to 1000 (the deepest "
                          "page a query answers)"),
    # kohya reads "<repeats>_<name>"; one folder name, so the export never writes outside its folder
    "EXPORT_SUBFOLDER": Allowed(lambda v: type(v) is str and re.fullmatch(r"[1-9][0-9]*_[A-Za-z0-9][A-Za-z0-9 ._-]*", v)
                                is not None, 'kohya\'s "<repeats>_<name>", like "10_castles": letters, digits, " ._-"'),
    "WATCH_POLL_S": at_least(0),
    "WATCH_COMPACT_ITEMS": at_least(1),
    "ALLOWED_HOSTS": Allowed(lambda v: type(v) is str and all(name.strip() for name in v.split(",")) or v == "",
                             'host names separated by commas, "*" (any) or "" (loopback and SERVE_HOST)'),
}


def load_config(argv: list[str], defaults: ModuleType = config) -> SimpleNamespace:
    """The constants of config.py, with each --NAME=value in argv replacing one for this run.

    Every value is checked against ALLOWED, config.py's own as well as the overrides: a bad one is a UserError
    naming the setting, the value and what it may be, before any step starts.
    """
    settings = {name: value for name, value in vars(defaults).items() if name.isupper()}
    given: dict[str, str] = {}  # name -> the override's text, for the error message
    for arg in argv:
        name, sep, text = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not sep:
            raise UserError(f"arguments look like --NAME=value, got {arg!r}")
        if name not in settings:
            raise UserError(f"unknown setting {name!r}; the settings are: {', '.join(settings)}")
        settings[name] = _parse(name, text, settings[name])
        given[name] = text
    for name, allowed in ALLOWED.items():
        if name in settings and not allowed.accepts(settings[name]):
            value = settings[name]
            where = f"--{name}={given[name]}" if name in given else f"{defaults.__name__}.py: {name} = {value!r}"
            raise UserError(f"{where}: {name} must be {allowed.says}")
    _check_out_dir(settings.get("OUT_DIR"))
    return SimpleNamespace(**settings)


def _check_out_dir(out_dir: object) -> None:
    """OUT_DIR naming a local file is refused before any step starts (the folders below it could not be made)."""
    if isinstance(out_dir, str) and not is_url(out_dir) and os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"OUT_DIR={out_dir} is a file, not a folder: set --OUT_DIR to a folder (or a new name)")


def _parse(name: str, text: str, default: object) -> object:
    kind = type(default)
    if kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
    else:
        try:
            value = kind(text)
        except ValueError:
            pass
        else:
            if kind is not float or math.isfinite(value):  # inf and nan pass float(), and no setting means them
                return value
            says = f", {ALLOWED[name].says}" if name in ALLOWED else ""
            raise UserError(f"--{name}={text}: {name} must be a finite number{says}")
    raise UserError(f"--{name}={text}: expected a {kind.__name__}, like the default {default!r}")
