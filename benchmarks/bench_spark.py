"""Steps 3 and 4 on a local Spark against the local distributor, on the same data: Spark's fixed costs.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/bench_spark.py [--images=256] [--batch-size=32]
        [--cores=2] [--vectors=100000] [--full-size]

Step 3: --images generated PNGs, a CLIP with random weights (tiny unless --full-size: the ViT-B/32), on the CPU,
no loader processes, batch --batch-size; the local run, then DISTRIBUTOR=pyspark on local[--cores] (one task per
core). Step 4: --vectors random 512-d vectors in batches of 1000, local then pyspark. Every run starts from an
empty output folder; the outputs are compared byte for byte (the index's infos.json holds timings). The Spark
session is started once, outside the timings, and its start time printed. "per task": (Spark - local) divided by
the tasks of the run, each of which starts a Python worker, imports torch and loads the model.
"""

import argparse
import filecmp
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # scaffolding.py: random-weight models, the real data files

import numpy as np  # noqa: E402
from bench_incremental import timed  # noqa: E402
from PIL import Image  # noqa: E402
from scaffolding import save_random_clip  # noqa: E402

from prompt_search.embedding.set_writer import save_batch  # noqa: E402
from prompt_search.embedding.visual import embed_images  # noqa: E402
from prompt_search.index.build import build_index  # noqa: E402
from prompt_search.settings import EmbedSettings, IndexSettings  # noqa: E402
from prompt_search.spark import local_master, spark_session  # noqa: E402


def same_files(a: Path, b: Path, skip: str = "infos.json") -> bool:
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file() and p.name != skip)
    return names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file() and p.name != skip) \
        and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--full-size", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    rng = np.random.default_rng(0)
    for i in range(args.images):
        pixels = rng.integers(0, 256, (224, 224 + i % 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(work / f"{i:05d}.png")
    model = str(work / "clip.pt")
    save_random_clip(model, full_size=args.full_size)
    vectors = work / "vectors"
    for batch, start in enumerate(range(0, args.vectors, 1000)):
        count = min(1000, args.vectors - start)
        save_batch(str(vectors), batch, rng.normal(size=(count, 512)), [f"{start + i}" for i in range(count)], [])
    (vectors / "manifest.json").write_text('{"model": "random"}')

    started = time.perf_counter()
    with spark_session(local_master(str(args.cores))):
        print(f"Spark session (local[{args.cores}]) started in {time.perf_counter() - started:.1f} s")
        tasks = min(args.cores, -(-args.images // args.batch_size))
        for distributor in ("local", "pyspark"):
            seconds = timed(lambda d=distributor: embed_images(str(work), str(work / f"emb-{d}"),
                                                               EmbedSettings(model, "", "cpu", args.batch_size,
                                                                             num_workers=0, decode="", distributor=d)))
            print(f"step 3 {distributor}: {args.images} images in {seconds:.1f} s")
            if distributor == "local":
                local3 = seconds
        print(f"step 3: Spark {seconds - local3:+.1f} s over {tasks} tasks, {(seconds - local3) / tasks:+.1f} s per "
              f"task; same files: {same_files((work / 'emb-local').resolve(), (work / 'emb-pyspark').resolve())}")
        for distributor in ("local", "pyspark"):
            seconds = timed(lambda d=distributor: build_index(str(vectors), str(work / f"index-{d}"),
                                                              IndexSettings("1G", "4G", 10.0, distributor=d), ""))
            print(f"step 4 {distributor}: {args.vectors} vectors in {seconds:.1f} s")
            if distributor == "local":
                local4 = seconds
        same = same_files((work / "index-local").resolve(), (work / "index-pyspark").resolve())
        print(f"step 4: Spark {seconds - local4:+.1f} s; same files (infos.json aside): {same}; "
              f"load average {os.getloadavg()[0]:.1f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
