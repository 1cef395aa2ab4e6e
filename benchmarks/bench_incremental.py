"""Steps 1 (folder) and 3 rerun after adding 1% new images, against their full runs, and the hashing step 3 pays.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/bench_incremental.py [--images=10000] [--added=100]
        [--model=tiny|vit-b-32] [--batch-size=128] [--workers=-1] [--size=128]

In a temporary folder: --images JPEGs of --size x --size pixels (bench_embed.fake_image, quality 95), embedded
once by embed_images on the CPU (the full run), then --added more, embedded again (the rerun: it hashes every
file, reuses the published vectors and encodes only the new images), then once more unchanged (nothing to do).
--model tiny: the tests' tiny CLIP (random weights), so the full run is mostly decoding and the ratio is a
pessimistic one; vit-b-32: the full-size ViT-B/32 with random weights (speed does not depend on the values).
Both runs include listing, hashing, loading the model and writing the set, as the step does; no index build.
Step 1 for a folder (extract_folder_metadata) is timed the same way: full run, rerun after adding, unchanged.
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # scaffolding.py: random-weight models

import numpy as np  # noqa: E402
from bench_embed import fake_image  # noqa: E402
from scaffolding import save_random_clip  # noqa: E402

from prompt_search.embedding.reuse import content_hash  # noqa: E402
from prompt_search.embedding.visual import embed_images  # noqa: E402
from prompt_search.settings import EmbedSettings
from prompt_search.sources.folder_metadata import extract_folder_metadata  # noqa: E402
from prompt_search.sources.image_files import list_images  # noqa: E402


def make_jpegs(folder: Path, first: int, count: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(first)
    for i in range(first, first + count):
        fake_image(rng, size, size).save(folder / f"{i:09d}.jpg", quality=95)


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--added", type=int, default=100)
    parser.add_argument("--model", choices=["tiny", "vit-b-32"], default="tiny")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = str(root / "clip.pt")
        save_random_clip(checkpoint, full_size=args.model == "vit-b-32")
        images, out = root / "images", str(root / "out")
        made = timed(lambda: make_jpegs(images, 0, args.images, args.size))
        print(f"made {args.images} JPEGs of {args.size}x{args.size} in {made:.1f} s")

        def step() -> None:
            embed_images(str(images), out,
                         EmbedSettings(checkpoint, "", "cpu", args.batch_size, num_workers=args.workers))

        def metadata() -> None:
            extract_folder_metadata(str(images), out, "a1111")

        full, metadata_full = timed(step), timed(metadata)
        make_jpegs(images, args.images, args.added, args.size)
        rerun, metadata_rerun = timed(step), timed(metadata)
        unchanged, metadata_unchanged = timed(step), timed(metadata)
        paths = [path for _, path in list_images(str(images))[0]]
        hashing = timed(lambda: [content_hash(path) for path in paths])
        megabytes = sum(os.path.getsize(path) for path in paths) / 1e6

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n### bench_incremental.py, {when}, {platform.node()}, {os.cpu_count()} CPUs, {platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print(f"`{' '.join(sys.argv)}`: {args.images} JPEGs of {args.size}x{args.size}, {args.added} added, model "
          f"{args.model}, batch size {args.batch_size}, workers {args.workers}\n")
    print("| run | seconds | of the step's full run |\n|---|---|---|")
    for name, seconds, whole in [(f"step 3, full run, {args.images} images", full, full),
                                 (f"step 3, rerun after adding {args.added}", rerun, full),
                                 ("step 3, rerun, nothing changed", unchanged, full),
                                 (f"hashing all {len(paths)} files alone ({megabytes:.0f} MB, warm cache)", hashing,
                                  full),
                                 (f"step 1 (folder), full run, {args.images} images", metadata_full, metadata_full),
                                 (f"step 1 (folder), rerun after adding {args.added}", metadata_rerun, metadata_full),
                                 ("step 1 (folder), rerun, nothing changed", metadata_unchanged, metadata_full)]:
        print(f"| {name} | {seconds:.2f} | {100 * seconds / whole:.1f}% |")


if __name__ == "__main__":
    main()
