"""Step 3: CLIP image embeddings of every image in a folder, batch by batch (layout in set_writer.py).

Two input paths give the model the same crops (gpu_input.py's tests check it):
  cpu: loader processes decode, resize and crop with PIL; the device only normalises.
  gpu: loader processes read the JPEG bytes; the device decodes (nvJPEG), resizes, crops and normalises
       them in batches, in a thread that runs ahead of the model (gpu_input.py).
"""

import os
import time
from collections.abc import Iterator, Mapping
from functools import partial

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from prompt_search import storage
from prompt_search.embedding.gpu_input import (
    Counts,
    DeviceBatch,
    ItemImages,
    JpegBytes,
    Sample,
    cpu_sample,
    device_batch,
    keep_list,
    normalise,
    prefetched,
)
from prompt_search.embedding.reuse import Batch, Ranges, content_hash
from prompt_search.embedding.set_writer import embed_items
from prompt_search.embedding.spark_embed import embed_on_spark
from prompt_search.errors import UserError
from prompt_search.layout import IMAGES_FILE
from prompt_search.models.clip import load
from prompt_search.models.openai_clip import choose_device
from prompt_search.pixels import PixelSpec
from prompt_search.settings import EmbedSettings
from prompt_search.sources.image_files import list_images, path_from_text, print_unreadable_folders
from prompt_search.spark import session_for

LOADER_PREFETCH = 4  # batches each loader process keeps ready (DataLoader's default 2 can leave a GPU waiting)
DEVICE_PREFETCH = 3  # batches the GPU path decodes ahead of the model


class PilCrops(ItemImages):
    """Item i: a Sample holding its PIL crop (size x size x 3 uint8), or the reason it was skipped."""

    def __getitem__(self, i: int) -> Sample:
        item_id, path = self.items[i]
        return cpu_sample(item_id, path, self.pixels)


def stack_crops(samples: list[Sample]) -> tuple[torch.Tensor | None, list[str], list[tuple[str, str]]]:
    """The CPU path's collate_fn: uint8 crops as one N x size x size x 3 tensor (a quarter of float32's bytes to
    pin and copy), ids, skipped (path, reason)."""
    good = [s for s in samples if s.crop is not None]
    crops = torch.from_numpy(np.stack([s.crop for s in good])) if good else None
    return crops, [s.item_id for s in good], [(s.path, s.reason) for s in samples if s.crop is None]


def workers(num_workers: int) -> int:
    """-1: one loader process per core this process may run on."""
    if num_workers >= 0:
        return num_workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_path(decode: str, device: str) -> str:
    """DECODE "" picks the GPU path on a GPU and the CPU path elsewhere."""
    return decode or ("gpu" if device.startswith("cuda") else "cpu")


def loader(dataset: Dataset, ranges: Ranges, num_workers: int, collate, pin: bool) -> DataLoader:
    count = workers(num_workers)
    return DataLoader(dataset, batch_sampler=[list(r) for r in ranges], num_workers=count, collate_fn=collate,
                      pin_memory=pin, prefetch_factor=LOADER_PREFETCH if count else None)


def cpu_batches(items: list[tuple[str, str]], ranges: Ranges, device: str, pixels: PixelSpec, dtype: torch.dtype,
                num_workers: int) -> Iterator[DeviceBatch]:
    for crops, ids, skipped in loader(PilCrops(items, pixels), ranges, num_workers, stack_crops,
                                      pin=device != "cpu"):
        if crops is not None:
            crops = normalise(crops.to(device, non_blocking=True).permute(0, 3, 1, 2), pixels, dtype)
        yield crops, ids, skipped


def gpu_batches(items: list[tuple[str, str]], ranges: Ranges, device: str, pixels: PixelSpec, dtype: torch.dtype,
                num_workers: int, counts: Counts) -> Iterator[DeviceBatch]:
    samples = loader(JpegBytes(items, pixels), ranges, num_workers, keep_list, pin=False)
    batches = (device_batch(batch, device, pixels, dtype, counts) for batch in samples)
    return prefetched(batches, DEVICE_PREFETCH, device)


def encode_images(items: list[tuple[str, str]], ranges: list[range], settings: EmbedSettings,
                  started: float | None = None, listed: float | None = None) -> Iterator[Batch]:
    """Load the model and yield each range's batch of items: the encode_batches of set_writer.embed_items.

    A module function, not a closure, so that a Spark task can run it too (spark_embed.py).
    started, listed: when the step started and when its images were listed, for the timings it prints; None: now
    (in a Spark task, where the driver's clock means nothing).
    """
    now = time.perf_counter()
    started, listed = (now if started is None else started), (now if listed is None else listed)
    chosen = choose_device(settings.device)
    clip_model = load(settings.model, chosen, settings.model_dir)
    model, pixels = clip_model.model, clip_model.pixels
    loaded = time.perf_counter()
    path, counts = decode_path(settings.decode, chosen), Counts()
    where = {"gpu": f"batches decoded on {chosen}" + (" with nvJPEG" if chosen.startswith("cuda") else ""),
             "cpu": "images decoded with PIL"}[path]
    print(f"embedding {sum(map(len, ranges))} of {len(items)} images with {settings.model} on {chosen} in "
          f"{clip_model.dtype}; input path {path}: {where} in {workers(settings.num_workers)} loader processes")
    if path == "gpu":
        batches = gpu_batches(items, ranges, chosen, pixels, clip_model.dtype, settings.num_workers, counts)
    else:
        batches = cpu_batches(items, ranges, chosen, pixels, clip_model.dtype, settings.num_workers)
    done, first = 0, None
    with torch.inference_mode():
        for pixels_in, ids, skipped in batches:
            vectors = np.empty((0, clip_model.dim), np.float32)
            if ids:
                vectors = model.encode_image(pixels_in).float().cpu().numpy()
            if first is None:
                first = time.perf_counter()
                print(f"first batch after {first - started:.1f} s: listing and hashing {listed - started:.1f} s, model "
                      f"{loaded - listed:.1f} s, loaders and the first batch {first - loaded:.1f} s")
            done += len(ids) + len(skipped)
            yield vectors, ids, skipped
    end = time.perf_counter()
    steady = f", {(done - len(ranges[0])) / (end - first):.1f} after the first batch" if len(ranges) > 1 else ""
    print(f"input path {path}: {done} images in {end - started:.1f} s, {done / (end - started):.1f} images/s"
          f"{steady}")
    if path == "gpu" and counts.on_cpu:
        print(f"  {counts.on_cpu} of them decoded with PIL on the CPU (not JPEG, or refused by the device), "
              f"first: {counts.first_on_cpu}")


def embed_images(img_dir: str, folder: str, settings: EmbedSettings, known: Mapping[str, np.ndarray] | None = None
                 ) -> tuple[int, list[tuple[str, str]]]:
    """Embed every image below img_dir into the set at folder; return (vectors written, skipped (path, reason)).

    An image whose id another image already has is skipped, so that an id always names one picture.
    decode: "cpu" or "gpu" input path (see the module's doc), "" for the device's own.
    distributor "pyspark": the batches are computed in Spark tasks (spark_embed.py), the same files as a local run.
    known: vectors by content hash computed already (serve.py --WATCH's), reused as the published set's are.
    """
    started = time.perf_counter()
    if not storage.is_dir(img_dir):
        raise UserError(f"image folder {img_dir} not found: run download_images.py, or set --IMG_DIR")
    items, refused, sidecar_problems = list_images(img_dir)
    rejected = [(path, reason) for path, _, reason in refused]
    hashes = [content_hash(path_from_text(path)) for _, path in items]  # reading each file costs little beside encoding
    listed = time.perf_counter()
    print(f"listed and hashed {len(items)} images in {listed - started:.1f} s")
    print_unreadable_folders(refused)
    if sidecar_problems:
        sidecar, problem = sidecar_problems[0]
        print(f"{len(sidecar_problems)} sidecars give no usable id, so their images have their path as id "
              f"(first: {sidecar}: {problem})")
    if not items:
        if storage.glob(os.path.join(img_dir, "*.tar")):
            raise UserError(f"{img_dir} holds webdataset .tar shards: this step reads img2dataset's "
                            "OUTPUT_FORMAT=files; download again with --OUTPUT_FORMAT=files")
        raise UserError(f"no images in {img_dir}: nothing to embed (see download_images.py's summary)")

    encode = partial(encode_images, settings=settings, started=started, listed=listed)
    paths = pa.table({"id": [i for i, _ in items], "path": [p for _, p in items]})
    with session_for(settings.distributor, settings.spark_master) as spark:
        distribute = None if spark is None else partial(embed_on_spark, spark, items, encode, hashes=hashes)
        skipped = embed_items(folder, items, settings.model, settings.batch_size, partial(encode, items), unit="img",
                              tables={IMAGES_FILE: paths}, rejected=rejected, hashes=hashes, known=known,
                              distribute=distribute)
    return len(items) - len(skipped) + len(rejected), skipped


def print_summary(folder: str, written: int, skipped: list[tuple[str, str]]) -> None:
    print(f"{folder}: {written} embeddings, {len(skipped)} skipped")
    for source, reason in skipped[:20]:
        print(f"  skipped {source}: {reason}")
    if len(skipped) > 20:
        print(f"  ... all {len(skipped)} in {os.path.join(folder, 'skipped.csv')}")
