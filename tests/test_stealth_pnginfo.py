"""Metadata in a PNG's pixels (stealth PNG-info: stealth_pnginfo.py) and in its chunks wherever they are
(png_chunks.py), and what reading them costs: bytes read, counted by the kernel (/proc/self/io)."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from generations import NEGATIVE, a1111_text, novelai_comment, unicode_comment
from PIL import Image, PngImagePlugin

from prompt_search.sources import folder_metadata
from prompt_search.sources.folder_metadata import read_texts
from prompt_search.sources.image_metadata import decode_user_comment, parse_metadata
from prompt_search.sources.stealth_pnginfo import read_stealth


def stealth_png(path: Path, text: str, mode: str = "alpha", compressed: bool = True) -> Path:
    """A PNG as sd-webui-stealth-pnginfo writes it (scripts/stealth_pnginfo.py, add_data): signature, the payload's
    length in bits, the payload, down the columns in the alpha channel's or R, G, B's lowest bits."""
    payload = gzip.compress(text.encode()) if compressed else text.encode()
    signature = f"stealth_{'png' if mode == 'alpha' else 'rgb'}{'comp' if compressed else 'info'}".encode()
    bits = np.unpackbits(np.frombuffer(signature + (8 * len(payload)).to_bytes(4, "big") + payload, np.uint8))
    pixels = np.random.default_rng(0).integers(0, 256, (96, 64, 4), dtype=np.uint8)
    pixels[:, :, 3] = 255
    channels = pixels[:, :, 3:] if mode == "alpha" else pixels[:, :, :3]
    stream = channels.transpose(1, 0, 2).reshape(-1)  # a copy, column-major
    stream[:len(bits)] = (stream[:len(bits)] & 0xFE) | bits
    channels[...] = stream.reshape(64, 96, -1).transpose(1, 0, 2)
    Image.fromarray(pixels if mode == "alpha" else pixels[:, :, :3]).save(path)
    return path


@pytest.mark.parametrize(("mode", "compressed"), [("alpha", False), ("rgb", True), ("rgb", False)])
def test_stealth_in_every_layout(tmp_path, mode, compressed):
    path = stealth_png(tmp_path / "s.png", a1111_text("a hidden castle", (1 << 64) - 1), mode, compressed)
    row, problems = folder_metadata.image_row(str(path), "a1111")
    assert (row["prompt"], row["negative_prompt"], row["seed"], row["tool"], problems) == \
        ("a hidden castle", NEGATIVE, (1 << 64) - 1, "a1111", [])


@pytest.mark.parametrize("cut", [
    lambda stored: stored[:10],  # gzip cut short: the length says more than is there
    lambda stored: stored[:4] + stored[4:].replace(b"\x1f\x8b", b"xx", 1),  # not gzip
    lambda stored: stored[:2],  # not even the length
])
def test_stealth_that_cannot_be_read_is_a_reject(tmp_path, cut):
    path = stealth_png(tmp_path / "s.png", "a castle", "alpha", True)
    texts = read_texts(path)[0]
    texts["stealth_pngcomp"] = cut(texts["stealth_pngcomp"])
    fields, problems = parse_metadata(texts)
    assert [reason for reason, _ in problems] == ["stealth_malformed"] and fields["tool"] is None


@pytest.mark.parametrize("stored", [
    (8_000_000).to_bytes(4, "big") + b"a cat",  # the length says more than the pixels hold
    (24).to_bytes(4, "big") + b"\xff\xfe\xfd",  # not UTF-8
])
def test_uncompressed_stealth_cut_short_or_not_utf8_is_a_reject(stored):
    fields, problems = parse_metadata({"stealth_pnginfo": stored})
    assert [reason for reason, _ in problems] == ["stealth_malformed"] and fields["prompt"] == ""


def bytes_read() -> int:
    """Bytes this process has read through system calls so far (Linux)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_a_png_without_a_stealth_signature_costs_its_first_rows_only(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (1024, 1024, 4), dtype=np.uint8)
    pixels[:, :, 3] = 255  # opaque, as most RGBA files: alpha's bits are all 1
    Image.fromarray(pixels).save(tmp_path / "noise.png", compress_level=1)
    Image.fromarray(pixels[:, :, :3]).save(tmp_path / "noise-rgb.png", compress_level=1)
    for name in ("noise.png", "noise-rgb.png"):
        size = (tmp_path / name).stat().st_size
        before = bytes_read()
        assert read_stealth(str(tmp_path / name)) == {}
        assert bytes_read() - before < 200_000 < size // 10, name
    pixels[:8, 0, 3] = 254 + np.unpackbits(np.frombuffer(b"s", np.uint8))  # an `s` by chance, then no signature
    Image.fromarray(pixels).save(tmp_path / "chance.png", compress_level=1)
    before = bytes_read()
    assert read_stealth(str(tmp_path / "chance.png")) == {}
    assert bytes_read() - before < (tmp_path / "chance.png").stat().st_size // 4  # 120 rows, not the image
    signed = stealth_png(tmp_path / "signed.png", "a castle")  # (the test below covers read_texts itself)
    before = bytes_read()
    assert read_stealth(str(signed))
    assert bytes_read() - before >= signed.stat().st_size  # with a signature, the whole image is decoded


def png_chunks_moved_after_the_image(path: Path, kinds: tuple[bytes, ...]) -> Path:
    """path's chunks of these kinds moved after its image data, as re-encoders such as ImageMagick write them."""
    data, position, chunks = path.read_bytes(), 8, []
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunks.append((kind, data[position:position + 12 + length]))
        position += 12 + length
    moved = [chunk for kind, chunk in chunks if kind in kinds]
    kept = [chunk for kind, chunk in chunks if kind not in kinds]
    path.write_bytes(data[:8] + b"".join(kept[:-1] + moved + kept[-1:]))  # before IEND
    return path


def test_png_texts_and_exif_are_read_without_decoding_the_pixels(tmp_path):
    """Pillow's getexif decodes a PNG's pixels to look past them; the texts are read by walking the chunks."""
    pixels = np.random.default_rng(2).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = unicode_comment(a1111_text("a castle in the exif", 4))
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", novelai_comment(5), zip=True)
    info.add_itxt("Description", "一只狐狸 a fox", zip=True)
    info.add_text("Software", "NovelAI")
    Image.fromarray(pixels).save(tmp_path / "big.png", compress_level=1, exif=exif.tobytes(), pnginfo=info)
    for moved in ((), (b"eXIf", b"zTXt", b"iTXt", b"tEXt")):
        path = png_chunks_moved_after_the_image(tmp_path / "big.png", moved)
        before = bytes_read()
        texts, size = read_texts(path)
        assert bytes_read() - before < 200_000 < path.stat().st_size // 10, moved
        fields, problems = parse_metadata(texts, "novelai")
        assert (fields["prompt"], fields["seed"], fields["tool"], problems) == \
            ("一只狐狸 a fox", 5, "novelai,a1111", []), moved
        assert decode_user_comment(texts["UserComment"]) == a1111_text("a castle in the exif", 4) and \
            size == (1024, 1024)
