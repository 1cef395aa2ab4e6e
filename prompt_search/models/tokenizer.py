"""CLIP's byte-pair tokenizer without torch, so that a query box needs no 5 GB install.

The algorithm and its vocabulary file (bpe_simple_vocab_16e6.txt.gz) are OpenAI CLIP's
(openai/CLIP, MIT licence). OpenCLIP's default tokenizer is the same code and vocabulary, except
that it spells its start and end tokens <start_of_text> and <end_of_text> (same ids), so a prompt
holding OpenAI's spelling is plain text to it and the other way round: TextSpec says which. Tests
check that tokenize() equals clip.tokenize and open_clip's tokenizer on every 1k.csv prompt and on
generated ones, both spellings of the special tokens among them.
"""

import gzip
import html
import os
from dataclasses import dataclass
from functools import lru_cache

import ftfy
import numpy as np
import regex

CONTEXT_LENGTH = 77  # the text context of OpenAI's CLIPs and of OpenCLIP's CLIP-BPE models
VOCAB_FILE = os.path.join(os.path.dirname(__file__), "bpe_simple_vocab_16e6.txt.gz")
OPENAI_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
OPEN_CLIP_SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")


@dataclass(frozen=True)
class TextSpec:
    """How a model's prompts become tokens: recorded beside its ONNX export, for the query without torch."""

    special_tokens: tuple[str, str] = OPENAI_SPECIAL_TOKENS  # start, end: ids 49406 and 49407 either way
    context_length: int = CONTEXT_LENGTH


@lru_cache
def _word_pattern(special_tokens: tuple[str, str]) -> regex.Pattern:
    words = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    return regex.compile("|".join(map(regex.escape, special_tokens)) + "|" + words, regex.IGNORECASE)


@lru_cache
def _byte_symbols() -> dict[int, str]:
    """A printable character for each byte value, as CLIP's vocabulary spells bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


@lru_cache
def _vocabulary() -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """The BPE vocabulary without the two special tokens, whose ids follow it; and the merge ranks."""
    with gzip.open(VOCAB_FILE) as f:
        lines = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(_byte_symbols().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    return {token: i for i, token in enumerate(vocab)}, {merge: i for i, merge in enumerate(merges)}


@lru_cache(maxsize=100_000)
def _bpe(word: str) -> tuple[str, ...]:
    _, ranks = _vocabulary()
    parts = (*word[:-1], word[-1] + "</w>")
    while len(parts) > 1:
        pairs = set(zip(parts[:-1], parts[1:], strict=True))
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = tuple(merged)
    return parts


def encode(text: str, spec: TextSpec = TextSpec()) -> list[int]:
    """The BPE token ids of text, without start and end tokens."""
    encoder, _ = _vocabulary()
    special = {token: len(encoder) + i for i, token in enumerate(spec.special_tokens)}
    symbols = _byte_symbols()
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    text = " ".join(text.split()).lower()
    ids = []
    for word in _word_pattern(spec.special_tokens).findall(text):
        if word in special:  # one token each, as in CLIP's SimpleTokenizer (its bpe cache starts with them)
            ids.append(special[word])
        else:
            ids.extend(encoder[part] for part in _bpe("".join(symbols[b] for b in word.encode())))
    return ids


def tokenize(texts: list[str], trim: bool = True, spec: TextSpec = TextSpec()) -> tuple[np.ndarray, list[bool]]:
    """Token ids as the model's own tokenizer gives them (clip.tokenize(texts, truncate=True), or
    open_clip's), and which texts were truncated.

    trim=True drops the trailing columns that are padding in every row: CLIP's text transformer is
    causal and reads the end token's position, so what follows the end token never changes the result.
    """
    context = spec.context_length
    start = len(_vocabulary()[0])  # the special tokens' ids follow the vocabulary
    end = start + 1
    rows = [[start, *encode(text, spec), end] for text in texts]
    truncated = [len(row) > context for row in rows]
    rows = [row[: context - 1] + [end] if cut else row for row, cut in zip(rows, truncated, strict=True)]
    width = max(len(row) for row in rows) if trim else context
    tokens = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return tokens, truncated
