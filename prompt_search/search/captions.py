"""A training caption from a generation's prompt: the prompt as written, or with the syntax only the generator
reads taken out (EXPORT_STRIP_WEIGHTS): A1111's and ComfyUI's weights "(castle:1.2)", emphasis "((castle))" and
"[castle]", NovelAI's "{castle}", and the LoRA, LyCORIS and hypernetwork tags "<lora:name:0.8>" that name files,
not what the picture shows. A bracket written as "\\(" is a literal one and stays, unescaped."""

import re

NETWORK_TAG = re.compile(r"<\s*(?:lora|lyco|lycoris|hypernet|hypernetwork)\s*:[^<>]*>", re.IGNORECASE)
WEIGHT = re.compile(r":\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*(?=\))")  # the ":1.2" before a closing bracket
ESCAPED = {"\\(": "\ue000", "\\)": "\ue001", "\\[": "\ue002", "\\]": "\ue003", "\\{": "\ue004", "\\}": "\ue005"}
BRACKETS = str.maketrans("", "", "()[]{}")
BREAK = re.compile(r"\bBREAK\b")  # A1111's chunk separator, no word of the picture
LOOSE_COMMAS = re.compile(r"\s*,(?:\s*,)*\s*")


def caption(prompt: str, strip_weights: bool) -> str:
    """The caption of an image made from prompt (a training set's .txt beside it)."""
    if not strip_weights:
        return prompt.strip()
    text = prompt
    for escaped, placeholder in ESCAPED.items():
        text = text.replace(escaped, placeholder)
    text = WEIGHT.sub("", NETWORK_TAG.sub("", text)).translate(BRACKETS)
    text = BREAK.sub(",", text)
    for escaped, placeholder in ESCAPED.items():
        text = text.replace(placeholder, escaped[1])
    lines = (" ".join(LOOSE_COMMAS.sub(", ", line).split()).strip(", ") for line in text.splitlines())
    return "\n".join(line for line in lines if line)
