"""A PNG's chunks, walked without decoding its pixels.

Pillow reads the chunks before the image data when it opens a PNG, and those after it only when it decodes the
pixels (Image.load, which getexif calls on a PNG): a whole decode per file to find a few texts. Generators write
their texts before the image data, but re-encoders (ImageMagick, say) move them after it; this reads them there by
seeking over the image data.
"""

import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CHUNKS = 1 << 16  # a PNG's chunk count, bounded: a hostile file could hold millions of empty ones
MAX_TEXT_BYTES = 1 << 20  # a text chunk larger than this (stored or inflated) is skipped, as Pillow does


def walk(f: BinaryIO) -> Iterator[tuple[bytes, int, int]]:
    """(kind, length, offset of its data) of each chunk of the PNG f, up to IEND; nothing when f is no PNG. The
    caller may read a chunk's data: the walk seeks to the next chunk itself."""
    f.seek(0)
    if f.read(8) != PNG_SIGNATURE:
        return
    position = 8
    for _ in range(MAX_CHUNKS):
        f.seek(position)
        head = f.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        yield kind, length, position + 8
        if kind == b"IEND":
            return
        position += 12 + length  # length, kind, data, CRC


def after_image(path: str) -> dict[str, str | bytes]:
    """The text chunks (tEXt, zTXt, iTXt: their key and text) and the eXIf chunk ("exif": its bytes) found after
    a PNG's image data; {} when there are none or the file is not a PNG."""
    found: dict[str, str | bytes] = {}
    with open(path, "rb", buffering=0) as f:  # unbuffered: a walk reads 8 bytes a chunk, not 8 KiB
        past_image = False
        for kind, length, _ in walk(f):
            past_image = past_image or kind == b"IDAT"
            if not past_image or kind == b"IDAT" or length > MAX_TEXT_BYTES:
                continue
            if kind == b"eXIf":
                found.setdefault("exif", f.read(length))
            elif kind in (b"tEXt", b"zTXt", b"iTXt"):
                try:
                    key, text = _text(kind, f.read(length))
                except (ValueError, zlib.error):  # a broken chunk is no text
                    continue
                found.setdefault(key, text)
    return found


def _text(kind: bytes, data: bytes) -> tuple[str, str]:
    """A text chunk's key and text: tEXt and zTXt in Latin-1, iTXt in UTF-8, zTXt and a compressed iTXt inflated."""
    key, _, rest = data.partition(b"\0")
    if kind == b"tEXt":
        return key.decode("latin-1"), rest.decode("latin-1")
    if kind == b"zTXt":
        return key.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")  # after the compression method byte
    compressed, rest = rest[:1] == b"\1", rest[2:]  # iTXt: compression flag and method
    _, _, rest = rest.partition(b"\0")  # the language tag
    _, _, text = rest.partition(b"\0")  # the translated key
    return key.decode("latin-1"), (_inflate(text) if compressed else text).decode("utf-8")


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    text = inflater.decompress(data, MAX_TEXT_BYTES + 1)
    if len(text) > MAX_TEXT_BYTES:
        raise ValueError("text chunk inflates past MAX_TEXT_BYTES")
    return text
