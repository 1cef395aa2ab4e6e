"""Step 3's GPU input path: loader processes read JPEG bytes, the GPU decodes (nvJPEG) and crops them in batches.

On the CPU path each loader process decodes and resizes with PIL, 1.8 ms an image a core, which caps a
16-core box near 8,700 images/s while the model alone does 20,000 (benchmarks/RESULTS.md, issue 13). Here
a loader process only reads the file and its JPEG header; torchvision.io.decode_jpeg decodes a whole batch
on the device, and images of one size are resized and cropped together. Anything else (PNG, CMYK JPEG,
a file nvJPEG refuses) is decoded on the CPU with the CPU path's own code, one by one, so every image gets
the same crop either way and an undecodable one is skipped with its reason.

Every function takes the device: on "cpu" the same code runs with torchvision's CPU JPEG decoder, which
is how the tests run it on machines without a GPU.
"""

import io
import queue
import threading
from collections.abc import Generator, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from prompt_search import storage
from prompt_search.pixels import UNREADABLE, PixelSpec, crop_offsets, crop_rgb, open_image, open_rgb, resized_size
from prompt_search.sources.image_files import path_from_text

INTERPOLATION = {"bicubic": F.InterpolationMode.BICUBIC, "bilinear": F.InterpolationMode.BILINEAR}  # PixelSpec's
NVJPEG_MODES = ("RGB", "L")  # JPEG colour modes decode_jpeg turns into RGB as PIL does; CMYK goes to PIL


@dataclass
class Sample:
    """One image as a loader process hands it over: JPEG bytes to decode on the device, or a crop made with
    PIL (size x size x 3 uint8), or neither and the reason it can't be used."""

    item_id: str
    path: str  # as list_images gives it (image_files.path_as_text)
    jpeg: torch.Tensor | None = None
    crop: np.ndarray | None = None
    reason: str = ""


DeviceBatch = tuple[torch.Tensor | None, list[str], list[tuple[str, str]]]  # model input or None, ids, skipped


@dataclass
class Counts:
    """What the GPU path did, for the step's last lines."""

    on_device: int = 0
    on_cpu: int = 0  # images decoded with PIL: not JPEG, or refused by the device
    first_on_cpu: str = ""


def reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def cpu_sample(item_id: str, path: str, pixels: PixelSpec) -> Sample:
    """The CPU path's decode of one image (PIL, draft mode for large JPEGs, bicubic resize, centre crop).

    Both paths decode from the path, so that a skipped image's reason is the same words either way."""
    try:
        crop = crop_rgb(open_rgb(path_from_text(path), draft_size=pixels.size), pixels.size, pixels.interpolation)
        return Sample(item_id, path, crop=crop)
    except UNREADABLE as error:
        return Sample(item_id, path, reason=reason(error))


class ItemImages(Dataset):
    """The images of (id, path) items, for a loader process to read; what item i becomes is the subclass's."""

    def __init__(self, items: list[tuple[str, str]], pixels: PixelSpec):
        self.items, self.pixels = items, pixels

    def __len__(self) -> int:
        return len(self.items)


class JpegBytes(ItemImages):
    """Item i: a Sample with the file's bytes when the device can decode them, else decoded here with PIL."""

    def __getitem__(self, i: int) -> Sample:
        item_id, path = self.items[i]
        try:
            data = storage.read_bytes(path_from_text(path))
            with open_image(io.BytesIO(data)) as image:  # the header only: format, mode, size
                # A JPEG without its end marker is cut short: PIL refuses it, nvJPEG might fill it in grey.
                whole_jpeg = image.format == "JPEG" and data.rstrip(b"\0")[-2:] == b"\xff\xd9"
                on_device = whole_jpeg and image.mode in NVJPEG_MODES
        except UNREADABLE:
            on_device = False
        if not on_device:
            return cpu_sample(item_id, path, self.pixels)
        return Sample(item_id, path, jpeg=torch.frombuffer(bytearray(data), dtype=torch.uint8))


def keep_list(samples: list[Sample]) -> list[Sample]:
    """The DataLoader's collate_fn: a batch stays a list of Samples (their images differ in size)."""
    return samples


def decode(samples: list[Sample], device: str, pixels: PixelSpec, counts: Counts) -> list[Sample | torch.Tensor]:
    """Each JPEG sample decoded on the device (3 x H x W uint8) in one batched call; the other samples as they are.

    When the batched call fails, each image is tried alone, and one the device refuses is decoded with PIL.
    """
    jpegs = [i for i, s in enumerate(samples) if s.jpeg is not None]
    out: list[Sample | torch.Tensor] = list(samples)
    try:
        decoded = decode_jpeg([samples[i].jpeg for i in jpegs], mode=ImageReadMode.RGB, device=device) if jpegs else []
        on_device = dict(zip(jpegs, decoded, strict=True))
    except RuntimeError:  # one bad file fails the whole batch: find it
        on_device = {}
        for i in jpegs:
            try:
                on_device[i] = decode_jpeg(samples[i].jpeg, mode=ImageReadMode.RGB, device=device)
            except RuntimeError:
                s = samples[i]
                out[i] = cpu_sample(s.item_id, s.path, pixels)
    for i, image in on_device.items():
        out[i] = image
    on_cpu = [s.path for i, s in enumerate(samples) if i not in on_device]
    counts.on_device += len(on_device)
    counts.on_cpu += len(on_cpu)
    counts.first_on_cpu = counts.first_on_cpu or next(iter(on_cpu), "")
    return out


def crop_on_device(images: list[torch.Tensor], pixels: PixelSpec) -> list[torch.Tensor]:
    """CLIP's resize and centre crop of decoded images (3 x H x W uint8), each as crop_rgb does it with PIL.

    Images of one size are resized together, in one call: img2dataset's keep_ratio images come in a few
    sizes, with the shorter side already at 224, so most batches need a handful of calls and no resize.
    Bicubic with antialias on uint8 matches PIL's resize within 1 level (tests/test_gpu_input.py).
    """
    size = pixels.size
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault((image.shape[2], image.shape[1]), []).append(i)
    crops: list[torch.Tensor | None] = [None] * len(images)
    for (width, height), members in by_size.items():
        batch = torch.stack([images[i] for i in members])
        new_width, new_height = resized_size(width, height, size)
        if (new_width, new_height) != (width, height):
            batch = F.resize(batch, [new_height, new_width], interpolation=INTERPOLATION[pixels.interpolation],
                             antialias=True)
        left, top = crop_offsets(new_width, new_height, size)
        batch = batch[:, :, top:top + size, left:left + size]
        for i, crop in zip(members, batch, strict=True):
            crops[i] = crop
    return crops


def normalise(crops: torch.Tensor, pixels: PixelSpec, dtype: torch.dtype) -> torch.Tensor:
    """N x 3 x size x size uint8 crops, on their device, as the model's input: scaled to [0, 1], normalised."""
    mean = torch.tensor(pixels.mean, device=crops.device).view(1, 3, 1, 1)
    std = torch.tensor(pixels.std, device=crops.device).view(1, 3, 1, 1)
    return ((crops.float() / 255 - mean) / std).to(dtype)


def device_batch(samples: list[Sample], device: str, pixels: PixelSpec, dtype: torch.dtype,
                 counts: Counts) -> DeviceBatch:
    """One batch of Samples as (model input on device or None, ids, skipped (path, reason)), in the items' order."""
    decoded = decode(samples, device, pixels, counts)
    on_device = [i for i, d in enumerate(decoded) if isinstance(d, torch.Tensor)]
    crops = dict(zip(on_device, crop_on_device([decoded[i] for i in on_device], pixels), strict=True))
    for i, d in enumerate(decoded):
        if isinstance(d, Sample) and d.crop is not None:
            crops[i] = torch.from_numpy(d.crop).permute(2, 0, 1).to(device)
    skipped = [(d.path, d.reason) for d in decoded if isinstance(d, Sample) and d.crop is None]
    kept = sorted(crops)
    if not kept:
        return None, [], skipped
    batch = normalise(torch.stack([crops[i] for i in kept]), pixels, dtype)
    return batch, [samples[i].item_id for i in kept], skipped


def side_stream(device: str):
    """A CUDA stream of its own for the decoding thread, so that decoding overlaps the model; nothing on the CPU."""
    return torch.cuda.stream(torch.cuda.Stream(device)) if device.startswith("cuda") else nullcontext()


def prefetched(batches: Generator[DeviceBatch, None, None], depth: int, device: str) -> Iterator[DeviceBatch]:
    """batches, computed up to depth ahead in a thread (on its own CUDA stream on a GPU) while the caller runs the
    model. The thread stops when the caller stops early, and closes batches, so that its loader processes end."""
    ready: queue.Queue = queue.Queue(depth)
    stop, done = threading.Event(), object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work() -> None:
        try:
            with side_stream(device):
                for batch in batches:
                    if device.startswith("cuda"):
                        torch.cuda.current_stream().synchronize()  # the batch is ready before the model reads it
                    if not put(batch):
                        return
            put(done)
        except BaseException as error:  # raised again in the caller's thread
            put(error)
        finally:
            batches.close()

    thread = threading.Thread(target=work, daemon=True, name="gpu-input")
    thread.start()
    try:
        while (entry := ready.get()) is not done:
            if isinstance(entry, BaseException):
                raise entry
            if device.startswith("cuda") and entry[0] is not None:
                entry[0].record_stream(torch.cuda.current_stream())  # its memory is not reused while the model reads
            yield entry
    finally:
        stop.set()
        thread.join()
