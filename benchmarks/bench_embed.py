"""Step 3 on the CPU: images/s of our embed_images against the reference's way, and where the time goes.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/bench_embed.py [--images=64] [--batch-size=32]
        [--workers=0,1,2] [--rounds=4] [--png-images=32]

A full-size ViT-B/32 with random weights (save_random_clip; speed does not depend on the values) embeds
--images JPEGs as img2dataset writes them with RESIZE_MODE keep_ratio, IMAGE_SIZE 224 (shorter side 224,
mixed aspect ratios, .json sidecars with an id for 3 images in 4), in a temporary folder.
  reference: krea-ai/prompt-search's extract_visual_clip_embeddings.py on the CPU: a plain DataLoader over
             glob(*.jpg), clip's preprocess, model.encode_image in fp32 under no_grad, np.save per batch.
  ours:      prompt_search.embedding.visual.embed_images (list_images with sidecars, DataLoader, atomic batch files).
Both run in this process with the same model already loaded (clip.load's time is printed once, not counted),
with torch's default thread count, alternately (reference, ours, per worker count, order flipped each round);
the table shows medians, and the median of the paired runs' ratios (the machine's load drifts between pairs).
The split times decode+preprocess alone (one process) and the model alone.
"""

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # scaffolding.py: random-weight models, the real data files

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scaffolding import save_random_clip  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

import prompt_search.models.clip  # noqa: E402
from prompt_search.embedding import visual  # noqa: E402
from prompt_search.models.openai_clip import load_clip  # noqa: E402
from prompt_search.pixels import crop_rgb, open_rgb  # noqa: E402
from prompt_search.settings import EmbedSettings  # noqa: E402
from prompt_search.sources.image_files import list_images  # noqa: E402

SIZES = [(224, 224), (224, 336), (336, 224), (448, 224), (224, 298), (298, 224), (224, 280)]  # width x height


def fake_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour fields plus grain: compresses like a photo or a generation, unlike pure noise."""
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_jpegs(shard: Path, count: int) -> None:
    """img2dataset's "files" layout: 00000/000000123.jpg (quality 95) and, for 3 in 4, 000000123.json."""
    shard.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        fake_image(rng, width, height).save(shard / f"{i:09d}.jpg", quality=95)
        if i % 4:
            meta = {"id": f"gen-{i:06d}", "url": f"https://example.com/{i}.png", "key": f"{i:09d}",
                    "status": "success", "width": width, "height": height}
            (shard / f"{i:09d}.json").write_text(json.dumps(meta))


def make_pngs(folder: Path, count: int) -> None:
    """Full-size 512x768 generations as PNG, to show what decoding them costs."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        fake_image(rng, 512, 768).save(folder / f"{i:09d}.png")


class ReferenceDataset(Dataset):
    """The reference's CLIPImgDataset: glob the shard's *.jpg, id = file name, clip's preprocess."""

    def __init__(self, img_dir: str, preprocess: Callable):
        self.img_paths, self.preprocess = glob.glob(f"{img_dir}/*.jpg"), preprocess

    def __len__(self) -> int:
        return len(self.img_paths)

    def __getitem__(self, idx: int):
        img_path = self.img_paths[idx]
        return self.preprocess(Image.open(img_path)), img_path.split("/")[-1].split(".")[0]


def run_reference(shard: str, out: str, model: torch.nn.Module, preprocess: Callable, batch_size: int,
                  workers: int) -> int:
    """The reference's main() on the CPU (fp32, no fp16 cast); returns the number of images embedded."""
    os.makedirs(f"{out}/ids", exist_ok=True)
    os.makedirs(f"{out}/embeddings", exist_ok=True)
    loader = DataLoader(ReferenceDataset(shard, preprocess), batch_size=batch_size, num_workers=workers)
    count = 0
    for idx, (batch, ids) in enumerate(loader):
        with torch.no_grad():
            vectors = model.encode_image(batch)
        vectors /= vectors.norm(dim=-1, keepdim=True)
        np.save(os.path.join(out, f"ids/{idx:09d}.npy"), np.asarray(ids))
        np.save(os.path.join(out, f"embeddings/{idx:09d}.npy"), vectors.cpu().numpy().astype("float32"))
        count += len(ids)
    return count


def run_ours(img_dir: str, out: str, checkpoint: str, batch_size: int, workers: int) -> int:
    written, skipped = visual.embed_images(img_dir, out,
                                           EmbedSettings(checkpoint, "", "cpu", batch_size, num_workers=workers))
    assert not skipped, skipped
    return written


def seconds_per_image(load: Callable, paths: list[str], threads: int) -> float:
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    for path in paths:
        load(path)
    torch.set_num_threads(default)
    return (time.perf_counter() - start) / len(paths)


def decode_split(paths: list[str], preprocess: Callable, label: str, repeats: int = 3) -> dict[str, float]:
    """Seconds per image in one process, medians of passes taken alternately.

    With 1 torch thread as in a DataLoader worker, and ours also with the default threads, as with workers 0.
    Ours is what a loader process does (gpu_input.cpu_sample): PIL decode, draft mode for large JPEGs, resize and
    crop to uint8; normalising happens per batch on the device.
    """
    def ours(path: str) -> np.ndarray:
        return crop_rgb(open_rgb(path, draft_size=224), 224)

    stages = {
        f"decode alone (open_rgb), {label}, 1 thread": (open_rgb, 1),
        f"decode+preprocess, {label}, ours, 1 thread": (ours, 1),
        f"decode+preprocess, {label}, reference, 1 thread": (lambda p: preprocess(Image.open(p)), 1),
        f"decode+preprocess, {label}, ours, {torch.get_num_threads()} threads": (ours, torch.get_num_threads()),
    }
    passes = [{stage: seconds_per_image(load, paths, threads) for stage, (load, threads) in stages.items()}
              for _ in range(repeats)]
    return {stage: statistics.median(p[stage] for p in passes) for stage in stages}


def model_split(model: torch.nn.Module, pixels: list[torch.Tensor], batch_size: int) -> float:
    """Seconds per image of encode_image alone, on already-preprocessed batches."""
    batches = [torch.stack(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)]
    with torch.inference_mode():
        model.encode_image(batches[0][:2])  # warm-up
        start = time.perf_counter()
        for batch in batches:
            model.encode_image(batch)
    return (time.perf_counter() - start) / len(pixels)


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the DataLoader workers, once a run ends)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def compare(pipelines: dict[str, Callable[[int], int]], worker_counts: list[int], rounds: int, out: str,
            images: int) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """(wall s, CPU s) of each run of each pipeline at each worker count; they alternate, order flipped each round."""
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(rounds):
        for w in worker_counts:
            for name in list(pipelines)[:: 1 if r % 2 == 0 else -1]:
                wall, cpu = time.perf_counter(), cpu_seconds()
                count = pipelines[name](w)
                wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
                shutil.rmtree(os.path.dirname(out))  # ours: the set's link and its folder beside it
                assert count == images, (name, count)
                runs.setdefault((name, w), []).append((wall, cpu))
                print(f"  round {r + 1} {name:9} workers {w}: {wall:5.1f} s, {count / wall:4.1f} img/s", flush=True)
    return runs


def print_comparison(runs: dict[tuple[str, int], list[tuple[float, float]]], worker_counts: list[int],
                     images: int) -> None:
    print("| pipeline | workers | images | seconds | images/s | CPU s/image | ours/reference (range) |")
    print("|---|---|---|---|---|---|---|")
    for w in worker_counts:
        ratios = [ref[0] / ours[0] for ref, ours in zip(runs["reference", w], runs["ours", w], strict=True)]
        for name in ("reference", "ours"):
            wall, cpu = (statistics.median(x) for x in zip(*runs[name, w], strict=True))
            spread = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            ratio = spread if name == "ours" else ""
            print(f"| {name} | {w} | {images} | {wall:.1f} | {images / wall:.2f} | {cpu / images:.3f} | {ratio} |")
    wall = {key: statistics.median(t for t, _ in times) for key, times in runs.items()}
    best = min(worker_counts, key=lambda w: wall["ours", w])
    best_ref = min(worker_counts, key=lambda w: wall["reference", w])
    print(f"fastest: ours with workers {best}, the reference with workers {best_ref}; ours at its best / the reference "
          f"at its best: {wall['reference', best_ref] / wall['ours', best]:.2f} (above 1: ours faster); "
          f"load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="JPEGs to embed per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="0,1,2", help="DataLoader worker counts to try, comma-separated")
    parser.add_argument("--rounds", type=int, default=4, help="runs of each pipeline per worker count")
    parser.add_argument("--model-images", type=int, default=64, help="images for the model-alone split")
    parser.add_argument("--png-images", type=int, default=32, help="512x768 PNGs for the decode split (0: none)")
    parser.add_argument("--work-dir", help="folder for images, model and outputs (default: a temporary one)")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        work = Path(args.work_dir or tmp)
        img_dir, checkpoint = work / "images", work / "vit-b-32-random.pt"
        start = time.perf_counter()
        if not img_dir.exists():
            make_jpegs(img_dir / "00000", args.images)
            make_pngs(work / "png", args.png_images)
        if not checkpoint.exists():
            save_random_clip(str(checkpoint), full_size=True)
        print(f"made the images and the checkpoint in {time.perf_counter() - start:.0f} s")

        start = time.perf_counter()
        model, preprocess = load_clip(str(checkpoint), "cpu", "")
        print(f"clip.load (same for both, not counted below): {time.perf_counter() - start:.1f} s; "
              f"{model.dtype}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs")
        with torch.inference_mode():  # first-call costs paid here, by neither pipeline
            model.encode_image(torch.zeros(args.batch_size, 3, 224, 224))
        # ours reuses the loaded model, like the reference: models.clip.load calls its module's load_clip
        # (patching visual's name did nothing once step 3 loaded through models.clip, so each run of ours paid
        # clip.load's 1.2 s: ratios of 0.85-0.92 before this line)
        prompt_search.models.clip.load_clip = lambda *_: (model, preprocess)

        out, shard = str(work / "runs" / "out"), str(img_dir / "00000")
        pipelines = {
            "reference": lambda w: run_reference(shard, out, model, preprocess, args.batch_size, w),
            "ours": lambda w: run_ours(str(img_dir), out, str(checkpoint), args.batch_size, w),
        }
        runs = compare(pipelines, worker_counts, args.rounds, out, args.images)

        start = time.perf_counter()
        list_images(str(img_dir))
        split = {"list_images with sidecars (ours only)": (time.perf_counter() - start) / args.images}
        paths = sorted(glob.glob(str(img_dir / "00000" / "*.jpg")))
        split |= decode_split(paths, preprocess, "224px JPEG")
        png_paths = sorted(glob.glob(str(work / "png" / "*.png")))
        split |= decode_split(png_paths, preprocess, "512x768 PNG") if png_paths else {}
        pixels = [preprocess(open_rgb(p)) for p in paths[:args.model_images]]
        model_s = model_split(model, pixels, args.batch_size)
        split[f"model alone (encode_image, batch {args.batch_size}, {torch.get_num_threads()} threads)"] = model_s

    print(f"\nbatch size {args.batch_size}, {args.images} JPEGs a run, medians of {args.rounds} runs; ours/reference: "
          "median of the paired runs' speed ratios (above 1: ours faster)")
    print_comparison(runs, worker_counts, args.images)
    print("\nwhere the time goes, per image, one process (medians of 3 alternated passes):")
    print("| stage | ms/image | images/s |\n|---|---|---|")
    for stage, s in split.items():
        print(f"| {stage} | {s * 1000:.2f} | {1 / s:.1f} |")
    jpeg_s = split["decode+preprocess, 224px JPEG, ours, 1 thread"]
    print(f"decode+preprocess / model: {jpeg_s / model_s:.1%}; with no overlap expect {1 / (jpeg_s + model_s):.2f} "
          f"img/s, with perfect overlap at most {1 / model_s:.2f} img/s")


if __name__ == "__main__":
    main()
