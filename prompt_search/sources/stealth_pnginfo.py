"""Metadata hidden in a PNG's pixels: A1111's stealth PNG-info extension and NovelAI.

The writers put a bit stream in the least significant bits of the pixels, going down the first column, then the
second, and so on (column-major): in the alpha channel, one bit a pixel, or in R, G and B, three bits a pixel. The
stream is a 15-byte signature (stealth_pnginfo, stealth_pngcomp: alpha; stealth_rgbinfo, stealth_rgbcomp: RGB; comp
means gzip), the payload's length in bits (32 bits, big-endian), then the payload: A1111's `parameters` text, or
NovelAI's text chunks as a JSON object. (sd_webui_stealth_pnginfo's scripts/stealth_pnginfo.py; NovelAI's
novelai-image-metadata, nai_meta.py.)

Finding out costs little: the first 8 rows are decompressed (PNG rows are compressed one after the other) and only
their first pixel unfiltered, which depends on nothing but the same pixel of the row above. Only a file whose first
byte there is the signature's `s` is looked at further (its first 120 rows), and only one whose whole signature is
there is decoded whole. Looked at: 8-bit RGB and RGBA PNGs, not interlaced, as the
writers save them.
"""

import gzip
import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
from PIL import Image

from prompt_search.sources.png_chunks import walk

SIGNATURES = {b"stealth_pnginfo": "alpha", b"stealth_pngcomp": "alpha",
              b"stealth_rgbinfo": "rgb", b"stealth_rgbcomp": "rgb"}
SIGNATURE_BYTES, LENGTH_BYTES = 15, 4
PROBE_ROWS = 8  # enough for the signature's first byte in either channel set (8 alpha bits, or 3 pixels of RGB)
SIGNATURE_ROWS = 120  # enough for the whole signature (120 bits) in either
CHANNELS = {2: 3, 6: 4}  # PNG color type -> bytes a pixel: RGB, RGBA
READ_BYTES = 1 << 16


def read_stealth(path: str) -> dict[str, bytes]:
    """{signature: the payload as stored (its length, then as many bytes as the pixels hold of it, up to that
    length)} when path's pixels carry a stealth signature, else {}. decode_payload reads it."""
    modes = _probe(path, PROBE_ROWS, ["alpha", "rgb"])
    if modes:  # one file in 256 without a signature gets here by chance: look further before decoding it all
        modes = _probe(path, SIGNATURE_ROWS, modes)
    return _read_payload(path, modes) if modes else {}


def _probe(path: str, rows: int, modes: list[str]) -> list[str]:
    """Those of modes ("alpha", "rgb") whose bits down the first column of the first rows start as a signature does
    (the whole signature when the image is shorter). Reads the file's header chunks and the compressed data of
    those rows."""
    try:
        with open(path, "rb", buffering=0) as f:  # unbuffered: a walk reads 8 bytes a chunk, not 8 KiB
            header = _image_header(f)
            if header is None:
                return []
            width, height, channels, length = header
            rows = min(rows, height)
            raw = _inflate(f, length, rows * (1 + width * channels))
    except (OSError, struct.error, zlib.error):
        return []
    column = _first_column(raw, width, channels, rows)
    streams = {"alpha": column[:, 3:] if channels == 4 else column[:0], "rgb": column[:, :3]}
    return [mode for mode in modes if _starts_a_signature(_pack(streams[mode].reshape(-1)), mode)]


def decode_payload(signature: str, stored: bytes) -> str:
    """The text of a payload read_stealth returned. Raises ValueError (or gzip's BadGzipFile, an OSError, EOFError,
    zlib.error) on one that is cut short, not gzip when it should be, or not UTF-8."""
    bits = int.from_bytes(stored[:LENGTH_BYTES], "big")
    payload = stored[LENGTH_BYTES:]
    if len(stored) < LENGTH_BYTES or len(payload) * 8 < bits:
        raise ValueError(f"declares {bits} bits, the pixels hold {len(payload) * 8}")
    if signature.endswith("comp"):
        payload = gzip.decompress(payload)
    return payload.decode("utf-8")


def _starts_a_signature(stream: bytes, mode: str) -> bool:
    head = stream[:SIGNATURE_BYTES]
    return bool(head) and any(signature.startswith(head) for signature, its in SIGNATURES.items() if its == mode)


def _image_header(f: BinaryIO) -> tuple[int, int, int, int] | None:
    """Width, height and bytes a pixel of an 8-bit RGB(A) PNG that is not interlaced, and the length of its first
    IDAT chunk, the file then at that chunk's data; None for any other file."""
    channels = None
    for kind, length, _ in walk(f):
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", f.read(13))
            if depth != 8 or color not in CHANNELS or interlace or not width or not height:
                return None
            channels = CHANNELS[color]
        elif kind == b"IDAT":
            return (width, height, channels, length) if channels else None
    return None


def _image_data(f: BinaryIO, length: int) -> Iterator[bytes]:
    """The compressed image data in pieces, from the IDAT chunk of this length whose data the file is at on."""
    while True:
        left = length
        while left > 0:
            data = f.read(min(left, READ_BYTES))
            if not data:
                return
            left -= len(data)
            yield data
        f.seek(4, 1)  # the chunk's CRC
        length, kind = struct.unpack(">I4s", f.read(8))
        if kind != b"IDAT":
            return


def _inflate(f: BinaryIO, length: int, size: int) -> bytes:
    """The first size bytes (or fewer, at the data's end) of the decompressed image data."""
    inflater, out = zlib.decompressobj(), bytearray()
    for data in _image_data(f, length):
        out += inflater.decompress(data, size - len(out))  # stops at size, leaving the rest compressed
        if len(out) >= size or inflater.eof:
            break
    return bytes(out)


def _first_column(raw: bytes, width: int, channels: int, rows: int) -> np.ndarray:
    """The first pixel of each complete row, unfiltered. For the first pixel the left neighbours are zero, so the
    Sub filter adds nothing, Up and Paeth add the pixel above, Average half of it."""
    stride = 1 + width * channels
    pixels, above = [], bytes(channels)
    for row in range(min(rows, len(raw) // stride)):
        start = row * stride
        kind, stored = raw[start], raw[start + 1:start + 1 + channels]
        add = above if kind in (2, 4) else bytes(value >> 1 for value in above) if kind == 3 else bytes(channels)
        above = bytes((s + a) & 0xFF for s, a in zip(stored, add, strict=True))
        pixels.append(list(above))
    return np.array(pixels, dtype=np.uint8).reshape(-1, channels)


def _pack(values: np.ndarray) -> bytes:
    """The lowest bits of values, 8 to a byte (a last, partial byte left out)."""
    bits = np.asarray(values, dtype=np.uint8) & 1
    return np.packbits(bits[:len(bits) // 8 * 8]).tobytes()


def _read_payload(path: str, modes: list[str]) -> dict[str, bytes]:
    """Decode the image and read the bit stream of the first mode whose whole signature is there."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGBA"))
    for mode in modes:
        channel = pixels[:, :, 3:4] if mode == "alpha" else pixels[:, :, :3]
        stream = _pack(channel.transpose(1, 0, 2).reshape(-1))  # column-major, channels in order
        signature, start = stream[:SIGNATURE_BYTES], SIGNATURE_BYTES + LENGTH_BYTES
        if SIGNATURES.get(signature) == mode:
            bits = int.from_bytes(stream[SIGNATURE_BYTES:start], "big")
            return {signature.decode(): stream[SIGNATURE_BYTES:start + (bits + 7) // 8]}
    return {}
