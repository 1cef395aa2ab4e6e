"""What names a model, without torch: the open_clip: names MODEL may hold, and the fingerprint an output set records
of the model its vectors came from (the query path checks it against MODEL without loading the model)."""

import os
import re

OPEN_CLIP = "open_clip:"
CONFIG_SUFFIX = ".json"
FILE_STAMP = re.compile(r":\d+:\d+(?=/|$)")  # a checkpoint's ":size:mtime" in a fingerprint

def split_open_clip(name: str) -> tuple[str, str] | None:
    """(architecture, pretrained) of an open_clip: name; None for any other name.

    The architecture ends at the first "/", or, when it is a config file, after its ".json/".
    """
    if not name.startswith(OPEN_CLIP):
        return None
    rest = name.removeprefix(OPEN_CLIP)
    if CONFIG_SUFFIX + "/" in rest:
        arch, pretrained = rest.split(CONFIG_SUFFIX + "/", 1)
        return arch + CONFIG_SUFFIX, pretrained
    arch, _, pretrained = rest.partition("/")
    return arch, pretrained


def model_fingerprint(model: str) -> str:
    """What identifies a model's weights: its name, or its checkpoint's path, size and mtime; for an OpenCLIP
    model, open_clip: and the same of its architecture (name or config file) and pretrained tag (or checkpoint)."""
    found = split_open_clip(model)
    if found:
        return OPEN_CLIP + "/".join(map(model_fingerprint, found))
    if os.path.isfile(model):
        stat = os.stat(model)
        return f"{os.path.abspath(model)}:{stat.st_size}:{stat.st_mtime_ns}"
    return model


def fingerprint_model(fingerprint: str) -> str:
    """The MODEL a fingerprint was taken of: its checkpoints' paths without their size and mtime."""
    return FILE_STAMP.sub("", fingerprint)


def model_mismatch(recorded: str, model: str) -> str:
    """How vectors recorded with the fingerprint `recorded` differ from MODEL `model`, and what to run, to follow
    "... vectors " in a message; "" when they are of that model."""
    current = model_fingerprint(model)
    if recorded == current:
        return ""
    named = fingerprint_model(recorded)
    if named == fingerprint_model(current):
        return f"of {model} as it was before its file changed (size or time): recompute them with it"
    return f"of the model {named}, not of MODEL {model}: run with --MODEL={named}, or recompute them with MODEL {model}"
