"""Step 3 on a GPU box (issue 13): ours (GPU input path, and the CPU path) against the reference's way, and ceilings.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/bench_embed_gpu.py [--images=32768] [--rounds=2]

Makes --images JPEGs as img2dataset writes them with keep_ratio 224 (shards of 10,000, mixed aspect ratios,
sidecars with an id for 3 in 4; bench_embed.py's images), a full-size ViT-B/32 with random weights (speed
does not depend on the values), then, alternately for --rounds rounds:
  whole process: the reference's way (a fresh process: DataLoader, 14 workers, prefetch 14, batch 128,
                 fp16, np.save per batch) and ours (extract_visual_clip_embeddings.py with its defaults);
  in process, the model loaded once: the reference's way, ours on the GPU path, ours on the CPU path;
                 seconds from the start, and images/s after the first batch (steady state).
Then the ceilings (the model alone, CPU decode+preprocess per core, nvJPEG batch decode alone, our GPU input
path without the model), and whether the GPU path's embeddings match the CPU path's (cosine, top-10 of 100
image queries). Prints one table. On a machine without a CUDA GPU it says so and exits 0; --device=cpu runs the
same code on the CPU with a few images, to check the script itself (its numbers mean nothing).
About 5 minutes for 32,768 images on one H200 with 16 cores.
"""

import argparse
import glob
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # scaffolding.py: random-weight models, the real data files
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_embed import SIZES, ReferenceDataset, fake_image  # noqa: E402
from PIL import Image  # noqa: E402
from scaffolding import save_random_clip  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from prompt_search.embedding import set_writer as embed  # noqa: E402
from prompt_search.embedding import visual  # noqa: E402
from prompt_search.embedding.gpu_input import Counts  # noqa: E402
from prompt_search.models.openai_clip import load_clip  # noqa: E402
from prompt_search.pixels import CLIP_PIXELS  # noqa: E402
from prompt_search.settings import EmbedSettings  # noqa: E402

SHARD = 10_000  # img2dataset's default number of images per folder
REFERENCE = {"num_workers": 14, "prefetch_factor": 14}  # the reference's settings, with its batch size 128


def make_shard(args: tuple[Path, int, int]) -> None:
    """Images start..stop-1 of img2dataset's "files" layout: NNNNN/NNNNNNNNN.jpg (quality 95), a sidecar for 3 in 4."""
    folder, start, stop = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        shard = folder / f"{i // SHARD:05d}"
        shard.mkdir(parents=True, exist_ok=True)
        width, height = SIZES[i % len(SIZES)]
        fake_image(rng, width, height).save(shard / f"{i:09d}.jpg", quality=95)
        if i % 4:
            (shard / f"{i:09d}.json").write_text(json.dumps({"id": f"gen-{i:06d}", "key": f"{i:09d}"}))


def make_jpegs(folder: Path, count: int) -> None:
    step = 512
    with multiprocessing.Pool() as pool:
        pool.map(make_shard, [(folder, s, min(s + step, count)) for s in range(0, count, step)])


def reference_paths(img_dir: str) -> list[str]:
    return glob.glob(f"{img_dir}/*/*.jpg")


def run_reference(img_dir: str, out: str, model: torch.nn.Module, preprocess, device: str,
                  batch_size: int) -> list[float]:
    """The reference's main(): returns the time each batch was saved."""
    dataset = ReferenceDataset(img_dir, preprocess)
    dataset.img_paths = reference_paths(img_dir)  # its glob covers one folder; here every shard
    workers = min(REFERENCE["num_workers"], os.cpu_count() or 1)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        prefetch_factor=REFERENCE["prefetch_factor"] if workers else None)
    os.makedirs(f"{out}/ids", exist_ok=True)
    os.makedirs(f"{out}/embeddings", exist_ok=True)
    saved = []
    for idx, (batch, ids) in enumerate(loader):
        with torch.no_grad():
            vectors = model.encode_image(batch.to(device, model.dtype))
        vectors /= vectors.norm(dim=-1, keepdim=True)
        np.save(os.path.join(out, f"ids/{idx:09d}.npy"), np.asarray(ids))
        np.save(os.path.join(out, f"embeddings/{idx:09d}.npy"), vectors.cpu().numpy().astype("float32"))
        saved.append(time.perf_counter())
    return saved


def run_ours(img_dir: str, out: str, checkpoint: str, device: str, batch_size: int, decode: str) -> list[float]:
    """visual.embed_images with the loaded model (bench's caller patches load_clip): the time each batch was saved."""
    saved, save_batch = [], embed.save_batch

    def timed(*args):
        save_batch(*args)
        saved.append(time.perf_counter())

    embed.save_batch = timed
    try:
        visual.embed_images(img_dir, out,
                            EmbedSettings(checkpoint, "", device, batch_size, num_workers=-1, decode=decode))
    finally:
        embed.save_batch = save_batch
    return saved


def whole_process(command: list[str]) -> float:
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_ceiling(model: torch.nn.Module, device: str, batch: int, seconds: float = 3.0) -> float:
    pixels = torch.randn(batch, 3, 224, 224, device=device, dtype=model.dtype)
    with torch.inference_mode():
        model.encode_image(pixels)
        synchronize(device)
        start, done = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model.encode_image(pixels)
            done += batch
        synchronize(device)
    return done / (time.perf_counter() - start)


def cpu_decode_ceiling(paths: list[str], preprocess) -> float:
    """One core's decode+preprocess (the reference's way, 1 torch thread as in a loader process) x every core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    for path in paths:
        preprocess(Image.open(path))
    torch.set_num_threads(threads)
    return len(paths) / (time.perf_counter() - start) * len(os.sched_getaffinity(0))


def nvjpeg_ceiling(paths: list[str], device: str) -> float:
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8) for p in paths]
    decode_jpeg(data[:128], mode=ImageReadMode.RGB, device=device)
    synchronize(device)
    start = time.perf_counter()
    for i in range(0, len(data), 128):
        decode_jpeg(data[i:i + 128], mode=ImageReadMode.RGB, device=device)
    synchronize(device)
    return len(data) / (time.perf_counter() - start)


def input_path_ceiling(img_dir: str, device: str, dtype: torch.dtype) -> float:
    """Our GPU input path alone: loader processes, batched decode and crops, no model."""
    items = visual.list_images(img_dir)[0]
    ranges = [range(s, min(s + 128, len(items))) for s in range(0, len(items), 128)]
    start = time.perf_counter()
    for _ in visual.gpu_batches(items, ranges, device, CLIP_PIXELS, dtype, -1, Counts()):
        pass
    synchronize(device)
    return len(items) / (time.perf_counter() - start)


def agreement(gpu_set: Path, cpu_set: Path, queries: int = 100) -> tuple[float, int]:
    """Lowest cosine between the two paths' vectors of each image, and how many of `queries` images' top-10 agree."""
    def read(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        ids = np.concatenate([np.load(p) for p in sorted(folder.glob("ids/*.npy"))])
        return ids, np.concatenate([np.load(p) for p in sorted(folder.glob("embeddings/*.npy"))])

    (gpu_ids, gpu), (cpu_ids, cpu) = read(gpu_set), read(cpu_set)
    assert list(gpu_ids) == list(cpu_ids), "the two paths wrote different ids"
    lowest = float(np.min(np.sum(gpu * cpu, axis=1)))
    picks = np.linspace(0, len(gpu) - 1, queries).astype(int)
    same = sum(set(np.argsort(-gpu @ gpu[q])[:10]) == set(np.argsort(-cpu @ cpu[q])[:10]) for q in picks)
    return lowest, same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32768)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="for both (the reference's is 128)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to check the script itself on a few images")
    parser.add_argument("--work-dir", help="folder for images, model and outputs (default: a temporary one)")
    parser.add_argument("--reference-process", nargs=3, metavar=("IMG_DIR", "OUT", "CHECKPOINT"),
                        help=argparse.SUPPRESS)  # one whole-process run of the reference's way
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU on this machine: this benchmark measures step 3 on a GPU; nothing measured "
              "(bench_embed.py measures the CPU; --device=cpu checks this script on a few images)")
        return
    if args.reference_process:
        img_dir, out, checkpoint = args.reference_process
        model, preprocess = load_clip(checkpoint, args.device, "")
        run_reference(img_dir, out, model, preprocess, args.device, args.batch_size)
        return

    with tempfile.TemporaryDirectory(prefix="bench_embed_gpu_") as tmp:
        work = Path(args.work_dir or tmp)
        img_dir, checkpoint = work / "images", work / "vit-b-32-random.pt"
        start = time.perf_counter()
        if not img_dir.exists():
            make_jpegs(img_dir, args.images)
        if not checkpoint.exists():
            save_random_clip(str(checkpoint), full_size=True)
        print(f"made {args.images} JPEGs and the checkpoint in {time.perf_counter() - start:.0f} s", flush=True)
        device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
        print(f"{device_name}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}")

        model, preprocess = load_clip(str(checkpoint), args.device, "")
        visual.load_clip = lambda *_: (model, preprocess)  # in-process runs share the loaded model
        ours_whole = [sys.executable, str(REPO / "extract_visual_clip_embeddings.py"), f"--IMG_DIR={img_dir}",
                      f"--MODEL={checkpoint}", f"--DEVICE={args.device}", f"--BATCH_SIZE={args.batch_size}"]
        runs: dict[str, list[float]] = {}
        steady: dict[str, list[float]] = {}
        for r in range(args.rounds):
            out = work / f"out{r}"
            whole = {
                "the reference's way, whole process": [sys.executable, __file__, f"--device={args.device}",
                                                       f"--batch-size={args.batch_size}",
                                                       "--reference-process", str(img_dir), str(out / "ref"),
                                                       str(checkpoint)],
                "ours, defaults, whole process": [*ours_whole, f"--OUT_DIR={out / 'whole'}"],
            }
            for name, command in list(whole.items())[:: 1 if r % 2 == 0 else -1]:
                runs.setdefault(name, []).append(args.images / whole_process(command))
                print(f"  round {r + 1}: {name}: {runs[name][-1]:.0f} images/s", flush=True)
            in_process = {  # name: (its output folder, the run)
                "the reference's way, in process": ("ref", lambda o: run_reference(
                    str(img_dir), o, model, preprocess, args.device, args.batch_size)),
                "ours, GPU path, in process": ("gpu", lambda o: run_ours(
                    str(img_dir), o, str(checkpoint), args.device, args.batch_size, "gpu")),
                "ours, CPU path, in process": ("cpu", lambda o: run_ours(
                    str(img_dir), o, str(checkpoint), args.device, args.batch_size, "cpu")),
            }
            for name, (folder, run) in list(in_process.items())[:: 1 if r % 2 == 0 else -1]:
                began = time.perf_counter()
                saved = run(str(out / folder))
                runs.setdefault(name, []).append(args.images / (saved[-1] - began))
                after_first = args.images - min(args.batch_size, args.images)
                steady.setdefault(name, []).append(after_first / max(saved[-1] - saved[0], 1e-9))
                print(f"  round {r + 1}: {name}: {runs[name][-1]:.0f} images/s, steady {steady[name][-1]:.0f}",
                      flush=True)

        paths = reference_paths(str(img_dir))
        batches = sorted({args.batch_size, 512}) if args.device.startswith("cuda") else [args.batch_size]
        ceilings = {f"model alone, batch {b}": model_ceiling(model, args.device, b) for b in batches}
        ceilings |= {
            "CPU decode+preprocess, one core x every core": cpu_decode_ceiling(paths[:1000], preprocess),
            "batched JPEG decode alone (nvJPEG on cuda)": nvjpeg_ceiling(paths, args.device),
            "our GPU input path alone, no model": input_path_ceiling(str(img_dir), args.device, model.dtype),
        }
        last = work / f"out{args.rounds - 1}"
        lowest, same = agreement(last / "gpu", last / "cpu")

    print(f"\n{args.images} JPEGs, batch {args.batch_size}, {model.dtype}; medians of {args.rounds} rounds "
          "(every round in brackets)")
    print("| what | images/s | steady state (after the first batch) |\n|---|---|---|")
    for name, values in runs.items():
        spread = " / ".join(f"{v:.0f}" for v in values)
        after = f"{statistics.median(steady[name]):.0f}" if name in steady else ""
        print(f"| {name} | {statistics.median(values):.0f} ({spread}) | {after} |")
    for name, value in ceilings.items():
        print(f"| ceiling: {name} | {value:.0f} | |")
    ratio = statistics.median(runs["ours, defaults, whole process"]) / statistics.median(
        runs["the reference's way, whole process"])
    print(f"whole process, ours / the reference's: {ratio:.2f} (target 2.5); steady state of the GPU path: "
          f"{statistics.median(steady['ours, GPU path, in process']):.0f} images/s (target 10,000); "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"GPU path against CPU path, every image: lowest cosine {lowest:.5f} (target 0.9995); "
          f"top-10 of 100 image queries the same set: {same} of 100")


if __name__ == "__main__":
    main()
