"""Images as a model sees them, decoded safely: PIL's open with its size checked before any pixel is decoded, RGB,
and the resize, centre crop and normalisation of CLIP's preprocess without torch (PixelSpec says each model's)."""

import math
import warnings
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from prompt_search import storage

MAX_PIXELS = 8192 * 8192  # larger images are refused before decoding (decompression bombs)
UNREADABLE = (OSError, ValueError, SyntaxError)  # what PIL raises on a bad file, all three


@dataclass(frozen=True)
class PixelSpec:
    """How a model's images become pixels: a size x size centre crop after resizing the shorter side with
    interpolation, normalised per channel with mean and std. One place for both input paths of step 3 (PIL in
    loader processes, or batched on the GPU) and the queries, recorded beside the ONNX export for the query
    without torch. The defaults are OpenAI CLIP's; OpenCLIP's models say theirs."""

    size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"  # or "bilinear"


CLIP_PIXELS = PixelSpec()
DRAFT_FACTOR = 2  # a JPEG is decoded at 1/2, 1/4 or 1/8 scale while its shorter side stays at least this x the crop


class ImageTooLarge(ValueError):
    """An image over MAX_PIXELS or PIL's own limit (a decompression bomb), refused from its header."""


def check_size(image: Image.Image) -> None:
    """ImageTooLarge for an image over MAX_PIXELS, from its header, before anything is decoded."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(f"too large ({width}x{height} pixels, over {MAX_PIXELS})")


def open_image(source: str | IO[bytes]) -> Image.Image:
    """PIL's open of a local path or a file object, its size checked (check_size) before anything is decoded.

    PIL itself warns past Image.MAX_IMAGE_PIXELS (more than MAX_PIXELS: check_size refuses those with their size)
    and raises DecompressionBombError past twice that, which no caller expects: ImageTooLarge instead.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(source)
        except Image.DecompressionBombError as error:
            raise ImageTooLarge(f"too large ({error})") from None
    try:
        check_size(image)
    except ImageTooLarge:
        image.close()
        raise
    return image


def open_rgb(path: str, draft_size: int = 0) -> Image.Image:
    """The image at path in RGB, or ValueError/OSError with the reason it can't be used.

    draft_size: a JPEG much larger than that is decoded at reduced scale (libjpeg's DCT scaling, Image.draft),
    keeping its shorter side at least DRAFT_FACTOR x draft_size, so that the bicubic resize to draft_size still
    does the filtering; a full-size photo decodes several times faster.
    """
    with _open_image(path) as image:
        if draft_size and image.format == "JPEG":
            scale = DRAFT_FACTOR * draft_size / min(image.size)
            if scale <= 0.5:
                image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: scale to 8 bits first
            image = image.point(lambda v: v / 256).convert("L")
        return image.convert("RGB")


def _open_image(path: str) -> Image.Image:
    """PIL's open of a local path, or of the file at a URL; the same reason either way when it is no image."""
    if not storage.is_url(path):
        return open_image(path)
    try:
        return open_image(storage.open_file(path))  # read as PIL asks: the size is checked before the pixels come
    except UnidentifiedImageError:  # PIL would name the BytesIO object, a different address every time
        raise UnidentifiedImageError(f"cannot identify image file {path!r}") from None


RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side scaled to size, as torchvision's Resize(size) in CLIP's preprocess."""
    return (size, int(size * height / width)) if width <= height else (int(size * width / height), size)


def crop_offsets(width: int, height: int, size: int) -> tuple[int, int]:
    """(left, top) of the centre crop, rounded as torchvision's CenterCrop."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def crop_rgb(image: Image.Image, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """The model's resize and crop without torch: resize of the shorter side, centre crop; size x size x 3 uint8."""
    resized = resized_size(*image.size, size)
    if resized != image.size:
        image = image.resize(resized, RESAMPLING[interpolation])
    left, top = crop_offsets(*image.size, size)
    return np.array(image.crop((left, top, left + size, top + size)).convert("RGB"))  # a copy torch may write to


def to_pixels(image: Image.Image, spec: PixelSpec = CLIP_PIXELS) -> np.ndarray:
    """The model's preprocess without torch: crop_rgb, then normalise; 3 x size x size float32."""
    pixels = crop_rgb(image, spec.size, spec.interpolation).astype(np.float32) / 255.0
    mean, std = np.array(spec.mean, dtype=np.float32), np.array(spec.std, dtype=np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1)
