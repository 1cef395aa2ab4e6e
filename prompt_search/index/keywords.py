"""The words of a prompt as a keyword index reads them, and a keyword query too: one rule for both, so that a
phrase typed the way Stable Diffusion users write it finds the prompts that hold it however they wrote it.

  - case and accents folded: "Mucha", "MUCHA" and "Múcha" are one word;
  - weights and brackets are syntax, not words: "(masterpiece:1.2)", "((masterpiece))", "[masterpiece]" and
    "{masterpiece}" are the word masterpiece;
  - network tags keep their kind and name: "<lora:add_detail:0.8>" is the words lora, add, detail, so the
    query "<lora:add_detail>" (or "lora add detail") finds it, whatever its strength;
  - commas, underscores, hyphens, pipes and the rest of punctuation separate words: "greg_rutkowski",
    "greg-rutkowski" and "Greg Rutkowski," are the two words greg, rutkowski;
  - Chinese and Japanese, written without spaces, are read a character at a time ("一只猫": 一, 只, 猫).
"""

import re
import unicodedata

# <lora:name:0.8>, <lyco:name>, <hypernet:name:1>, <embedding:name>: the kind, then the name, the strength dropped
NETWORK_TAG = re.compile(r"<\s*([a-z]+)\s*:\s*([^:>]*?)\s*(?::\s*[-+]?[0-9.]*\s*)?>")
# A weight before a closing bracket: "(word:1.2)", "[word: 0.5]"; and A1111's [from:to:when] schedule's number
WEIGHT = re.compile(r":\s*[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)\s*(?=[)\]}>])")
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana and ideographs: written without spaces
# Letters and digits (an underscore separates words as a space does); each kana or ideograph a word of its own
WORD = re.compile(f"[{CJK}]|[^\\W_{CJK}]+")


def fold(text: str) -> str:
    """Case and accents folded: NFKD, combining marks dropped, casefold."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def words(text: str) -> list[str]:
    """The words of a prompt (or of a query), in order, as the module's doc says."""
    text = NETWORK_TAG.sub(lambda tag: f" {tag.group(1)} {tag.group(2)} ", fold(text))
    return WORD.findall(WEIGHT.sub(" ", text))
