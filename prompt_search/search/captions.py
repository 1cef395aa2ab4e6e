"""A training caption from a generation's prompt, on one line (kohya reads a caption file's first line only): the
prompt as written, or with the syntax only the generator reads taken out (EXPORT_STRIP_WEIGHTS): A1111's and
ComfyUI's weights "(castle:1.2)", emphasis "((castle))" and "[castle]", NovelAI's "{castle}", prompt editing
"[castle:forest:0.5]" (what the last steps drew: "forest"), alternation "[cat|dog]", and the LoRA, LyCORIS and
hypernetwork tags "<lora:name:0.8>" that name files, not what the picture shows. A bracket written as "\\(" is a
literal one and stays, unescaped; so do a colon and a number that no open bracket holds ("16:9", "1,000")."""

import re

NUMBER = r"\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*"
NETWORK_TAG = re.compile(r"<\s*(?:lora|lyco|lycoris|hypernet|hypernetwork)\s*:[^<>]*>", re.IGNORECASE)
WEIGHT_END = re.compile(":" + NUMBER + "$")  # what ends a weighted group, before its closing bracket
# A1111's prompt editing, innermost first: [from:to:when] and [to:when] draw "to" last, [from::when] draws nothing
EDITING = [(re.compile(r"\[([^\[\]:]*):([^\[\]:]*):" + NUMBER + r"\]"), r"\2"),
           (re.compile(r"\[([^\[\]:]*)::" + NUMBER + r"\]"), ""),
           (re.compile(r"\[([^\[\]:]*):" + NUMBER + r"\]"), r"\1")]
ALTERNATION = re.compile(r"\[([^\[\]]*\|[^\[\]]*)\]")  # [cat|dog]: both, by turns
ESCAPED = {"\\(": "\ue000", "\\)": "\ue001", "\\[": "\ue002", "\\]": "\ue003", "\\{": "\ue004", "\\}": "\ue005"}
BRACKETS = str.maketrans("", "", "()[]{}")
BREAK = re.compile(r"\bBREAK\b")  # A1111's chunk separator, no word of the picture
COMMAS = re.compile(r"\s*,(?:\s*,)+\s*")  # ", ," a tag taken out leaves
SPACE_BEFORE_COMMA = re.compile(r"\s+,")


def caption(prompt: str, strip_weights: bool) -> str:
    """The caption of an image made from prompt (a training set's .txt beside it)."""
    if not strip_weights:
        return ", ".join(line.strip() for line in prompt.splitlines() if line.strip())
    text = prompt
    for escaped, placeholder in ESCAPED.items():
        text = text.replace(escaped, placeholder)
    text = NETWORK_TAG.sub("", text)
    for pattern, kept in EDITING:
        text = pattern.sub(kept, text)
    text = ALTERNATION.sub(lambda found: found.group(1).replace("|", ", "), text)
    text = BREAK.sub(",", _without_weights(text).translate(BRACKETS))
    for escaped, placeholder in ESCAPED.items():
        text = text.replace(placeholder, escaped[1])
    lines = (" ".join(SPACE_BEFORE_COMMA.sub(",", COMMAS.sub(", ", line)).split()).strip(", ")
             for line in text.splitlines())
    return ", ".join(line for line in lines if line)


def _without_weights(text: str) -> str:
    """text without the ":1.2" of each weighted group "(castle:1.2)", nested ones too; an unmatched ")" is text."""
    out: list[str] = []
    opened: list[int] = []  # where each "(" still open is in out
    for char in text:
        if char == ")" and opened:
            start = opened.pop()
            weight = WEIGHT_END.search("".join(out[start + 1:]))
            if weight:
                del out[start + 1 + weight.start():]
        elif char == "(":
            opened.append(len(out))
        out.append(char)
    return "".join(out)
