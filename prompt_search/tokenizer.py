"""CLIP's byte-pair tokenizer without torch, so that a query box needs no 5 GB install.

The algorithm and its vocabulary file (bpe_simple_vocab_16e6.txt.gz) are OpenAI CLIP's
(openai/CLIP, MIT licence); tests check that tokenize() equals clip.tokenize on every 1k.csv prompt
and on generated ones, CLIP's special tokens among them.
"""

import gzip
import html
import os
from functools import lru_cache

import ftfy
import numpy as np
import regex

CONTEXT_LENGTH = 77  # every CLIP model's text context
VOCAB_FILE = os.path.join(os.path.dirname(__file__), "bpe_simple_vocab_16e6.txt.gz")
WORD = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@lru_cache
def _byte_symbols() -> dict[int, str]:
    """A printable character for each byte value, as CLIP's vocabulary spells bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


@lru_cache
def _vocabulary() -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    with gzip.open(VOCAB_FILE) as f:
        lines = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(_byte_symbols().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += SPECIAL_TOKENS
    return {token: i for i, token in enumerate(vocab)}, {merge: i for i, merge in enumerate(merges)}


SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


@lru_cache(maxsize=100_000)
def _bpe(word: str) -> tuple[str, ...]:
    if word in SPECIAL_TOKENS:  # one token each, as in CLIP's SimpleTokenizer (its bpe cache starts with them)
        return (word,)
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


def encode(text: str) -> list[int]:
    """The BPE token ids of text, without start and end tokens."""
    encoder, _ = _vocabulary()
    symbols = _byte_symbols()
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    text = " ".join(text.split()).lower()
    return [encoder[p] for word in WORD.findall(text) for p in _bpe("".join(symbols[b] for b in word.encode()))]


def tokenize(texts: list[str], trim: bool = True) -> tuple[np.ndarray, list[bool]]:
    """Token ids as clip.tokenize(texts, truncate=True) gives them, and which texts were truncated.

    trim=True drops the trailing columns that are padding in every row: CLIP's text transformer is
    causal and reads the end token's position, so what follows the end token never changes the result.
    """
    encoder, _ = _vocabulary()
    start, end = (encoder[token] for token in SPECIAL_TOKENS)
    rows = [[start, *encode(text), end] for text in texts]
    truncated = [len(row) > CONTEXT_LENGTH for row in rows]
    rows = [row[: CONTEXT_LENGTH - 1] + [end] if cut else row for row, cut in zip(rows, truncated, strict=True)]
    width = max(len(row) for row in rows) if trim else CONTEXT_LENGTH
    tokens = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return tokens, truncated
