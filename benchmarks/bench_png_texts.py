"""Step 1 for a folder: what reading one PNG's texts costs (folder_metadata.read_texts), in time and in bytes read
from the file, on PNGs without metadata (the case where the stealth PNG-info probe runs too).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_png_texts.py [--files=20] [--size=1024] [--work-dir=/tmp/x]

Writes --files PNGs of --size x --size random RGBA pixels, opaque, (incompressible: the file is as large as its
pixels) into --work-dir (default: a temporary folder, removed afterwards), reads each once to warm the page cache,
then reports the mean time and the mean bytes read (the process's rchar, Linux) per file. Run it with PYTHONPATH
at another checkout to measure that one (the baseline: the commit before issue 25's work)."""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

if not any(Path(p, "prompt_search").is_dir() for p in sys.path if p):  # PYTHONPATH names the checkout measured
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prompt_search.sources.folder_metadata import read_texts  # noqa: E402


def bytes_read() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def write_pngs(folder: str, files: int, size: int) -> list[str]:
    rng, paths = np.random.default_rng(0), []
    for i in range(files):
        pixels = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
        pixels[:, :, 3] = 255
        paths.append(os.path.join(folder, f"noise-{i}.png"))
        Image.fromarray(pixels).save(paths[-1], compress_level=1)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--work-dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.work_dir or temporary
        os.makedirs(folder, exist_ok=True)
        paths = write_pngs(folder, args.files, args.size)
        for path in paths:
            read_texts(path)
        before, start = bytes_read(), time.perf_counter()
        for path in paths:
            read_texts(path)
        seconds, read = (time.perf_counter() - start) / len(paths), (bytes_read() - before) / len(paths)
        print(f"read_texts: {seconds * 1000:.2f} ms a file, {read / 1024:.0f} KiB read a file "
              f"(files of {os.path.getsize(paths[0]) / 1024:.0f} KiB; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
