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

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

# <lora:name:0.8>, <lyco:name>, <hypernet:name:1>, <embedding:name>: the kind, then the name, the strength dropped
NETWORK_TAG = re.compile(r"<\s*([a-z]+)\s*:\s*([^:>]*?)\s*(?::\s*[-+]?[0-9.]*\s*)?>")
# A weight before a closing bracket: "(word:1.2)", "[word: 0.5]"; and A1111's [from:to:when] schedule's number
WEIGHT = re.compile(r":\s*[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)\s*(?=[)\]}>])")
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana and ideographs: written without spaces
# Letters and digits (an underscore separates words as a space does); each kana or ideograph a word of its own
WORD = re.compile(f"[{CJK}]|[^\\W_{CJK}]+")
# A run of the original text that is one word or less once folded: what a highlight marks (letters with their marks)
RUN = re.compile(f"[{CJK}]|[^\\W_{CJK}](?:[^\\W_{CJK}]|[\u0300-\u036f])*")


def fold(text: str) -> str:
    """Case and accents folded: NFKD, combining marks dropped, casefold."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def words(text: str) -> list[str]:
    """The words of a prompt (or of a query), in order, as the module's doc says."""
    text = NETWORK_TAG.sub(lambda tag: f" {tag.group(1)} {tag.group(2)} ", fold(text))
    return WORD.findall(WEIGHT.sub(" ", text))


QUOTED = re.compile(r'"([^"]*)"?')  # a phrase in double quotes; an unclosed quote runs to the end of the text


@dataclass(frozen=True)
class KeywordQuery:
    """A text query as the keyword index reads it (README: Queries): its unquoted words, any of which a prompt may
    hold (ranked by BM25, a prompt holding them all in order first); its quoted phrases, every one of which a prompt
    must hold; and its negative phrases, none of which it may hold."""
    words: tuple[str, ...] = ()
    phrases: tuple[tuple[str, ...], ...] = ()
    excluded: tuple[tuple[str, ...], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.words or self.phrases)

    def all_words(self) -> tuple[str, ...]:
        """Every word a match may hold, in the order given: what a result's prompt highlights."""
        return self.words + tuple(word for phrase in self.phrases for word in phrase)

    def whole(self) -> tuple[str, ...] | None:
        """The query's words when it is nothing but words (a pasted prompt): a prompt of exactly these comes first."""
        return self.words if self.words and not self.phrases else None


def parse_query(text: str, negatives: Sequence[str] = ()) -> KeywordQuery:
    """The keyword query of a text (its negative phrases already split off) and its negative phrases."""
    phrases = tuple(found for phrase in QUOTED.findall(text) if (found := tuple(words(phrase))))
    excluded = tuple(found for phrase in negatives if (found := tuple(words(phrase))))
    return KeywordQuery(tuple(words(QUOTED.sub(" ", text))), phrases, excluded)


def prompt_key(prompt_words: Sequence[str]) -> int:
    """A prompt's words as one 64-bit number: prompts with the same words, however written, have the same key."""
    digest = hashlib.blake2b(" ".join(prompt_words).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: tantivy's integer terms are signed


def matched_spans(text: str, wanted: Sequence[str]) -> list[tuple[int, int]]:
    """(start, end) in text of each run of it that reads as one of the wanted words: what a result highlights."""
    wanted_set = set(wanted)
    spans = []
    for run in RUN.finditer(text):
        if any(word in wanted_set for word in words(run.group())):
            spans.append(run.span())
    return spans
