"""Step 2: img2dataset downloads the images of the metadata table, each carrying its row's id.

Output: images_dir/NNNNN/*.jpg with a .json sidecar per image (holding "id"), and
images_dir/NNNNN_stats.json per shard, which the summary below reads.
"""

import json
import os
from collections import Counter
from dataclasses import dataclass, field

from prompt_search import storage
from prompt_search.children import spawned_children_die_with_me
from prompt_search.errors import UserError
from prompt_search.output_sets import published_file
from prompt_search.pixels import MAX_PIXELS
from prompt_search.settings import DownloadSettings
from prompt_search.spark import session_for

OPENCV_PIXELS = "OPENCV_IO_MAX_IMAGE_PIXELS"  # OpenCV refuses to decode an image over this many pixels (default 2^30)


@dataclass
class DownloadSummary:
    count: int = 0
    successes: int = 0
    failures: Counter = field(default_factory=Counter)


def download_images(metadata_file: str, images_dir: str, settings: DownloadSettings) -> DownloadSummary:
    """Run img2dataset on metadata_file; shards already complete in images_dir are kept (incremental).

    distributor "pyspark": img2dataset's own Spark distributor, on the session spark.py makes (its own would ask
    for 16G of driver memory); the files and stats are the same as its multiprocessing one's.
    """
    source = published_file(metadata_file)  # the set step 1 publishes now, whatever it publishes next
    if not storage.is_file(source):
        raise UserError(f"{metadata_file} not found: run extract_img_links_from_csv.py first")
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # else importing albumentations asks PyPI for a newer version
    from img2dataset import download as _img2dataset  # heavy import, only for this step

    # img2dataset decodes each image whole with OpenCV before its own max_image_area check; OpenCV's limit is
    # checked from the header, before the pixels are allocated. Its processes (spawned) read it from the environment.
    os.environ[OPENCV_PIXELS] = str(MAX_PIXELS)
    spawned_children_die_with_me()  # img2dataset's download and logger processes (download_images.py)

    with session_for(settings.distributor, settings.spark_master):
        _img2dataset(
            url_list=source,
            input_format="parquet",
            url_col="url",
            caption_col="prompt",
            save_additional_columns=["id"],
            output_folder=images_dir,
            output_format=settings.output_format,
            image_size=settings.image_size,
            resize_mode=settings.resize_mode,
            thread_count=settings.download_threads,
            processes_count=settings.download_processes,
            timeout=settings.download_timeout,
            retries=settings.download_retries,
            enable_wandb=False,
            incremental_mode="incremental",
            distributor="multiprocessing" if settings.distributor == "local" else settings.distributor,
        )
    return read_stats(images_dir)


def read_stats(images_dir: str) -> DownloadSummary:
    """Add up img2dataset's per-shard stats files."""
    summary = DownloadSummary()
    for path in storage.glob(os.path.join(images_dir, "*_stats.json")):
        stats = json.loads(storage.read_bytes(path))
        summary.count += stats["count"]
        summary.successes += stats["successes"]
        for status, count in stats["status_dict"].items():
            if status != "success":
                summary.failures[in_words(status)] += count
    return summary


def in_words(status: str) -> str:
    """img2dataset's reason for a failed image, said in words where it is a decoder's message; its text is kept.

    A zero-byte download reaches OpenCV's imdecode, whose assertion `!buf.empty()` is all img2dataset reports, and a
    file that is not an image (an HTML page, text, SVG, a truncated file) is its "Image decoding error".
    """
    raw = " ".join(status.split())  # OpenCV's messages end with a line end
    if "!buf.empty()" in raw:
        return f"empty file, 0 bytes ({raw})"
    if raw == "Image decoding error":
        return f"not an image, a truncated one, or a format OpenCV cannot read ({raw})"
    if "CV_IO_MAX_IMAGE_PIXELS" in raw:  # OpenCV's assertion "pixels <= CV_IO_MAX_IMAGE_PIXELS" (OPENCV_PIXELS)
        return f"over {MAX_PIXELS} pixels, refused before decoding ({raw})"
    if raw.startswith("OpenCV("):
        return f"OpenCV could not read the image ({raw})"
    return raw


def print_summary(summary: DownloadSummary, images_dir: str) -> None:
    print(f"{images_dir}: {summary.successes} of {summary.count} images downloaded")
    for reason, count in summary.failures.most_common(10):
        print(f"  {count} failed: {reason}")
    if summary.count and not summary.successes:
        print(
            "No image arrived (the reasons are above). Most open-prompts links are old Discord attachment "
            "URLs, which Discord has refused (HTTP 403) since late 2023; the prompt search "
            "(extract_textual_clip_embeddings.py) still works on every row."
        )
