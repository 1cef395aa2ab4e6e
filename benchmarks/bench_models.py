"""Issue 16: CPU query latency and CPU embedding speed of each supported model, with random full-size weights
(speed does not depend on the values), for README's models table.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/bench_models.py [--rounds=15] [--batch=16]

Query: one prompt and one 512x512 image through the exported ONNX models (fp32, onnxruntime's default
threads), as step 5 runs them: the torch-free tokenizer and preprocess included, the models called in turns
so that a noisy machine slows them alike; medians. Embedding: step 3's model call alone, torch on the CPU in
fp32, a batch of --batch preprocessed images; median images per second.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # scaffolding.py: random-weight models, the real data files

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scaffolding import save_random_clip, save_random_open_clip  # noqa: E402

from prompt_search.models.clip import load  # noqa: E402
from prompt_search.models.onnx_clip import TEXTUAL_FILE, VISUAL_FILE, encode_image, encode_text, start_session  # noqa: E402
from prompt_search.models.onnx_export import export_onnx  # noqa: E402
from prompt_search.models.tokenizer import tokenize  # noqa: E402
from prompt_search.pixels import to_pixels  # noqa: E402

PROMPT = "a corgi astronaut on the moon, highly detailed, digital art, trending on artstation"
# (label, OpenCLIP architecture or None for OpenAI's ViT-B/32)
MODELS = [("ViT-B/32 (OpenAI)", None), ("open_clip:ViT-B-32", "ViT-B-32"), ("open_clip:ViT-B-32-256", "ViT-B-32-256")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_models_"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8))
    runs = {}
    for label, arch in MODELS:
        checkpoint = str(work / f"{arch or 'openai'}.pt")
        if arch:
            save_random_open_clip(checkpoint, arch)
            name = f"open_clip:{arch}/{checkpoint}"
        else:
            save_random_clip(checkpoint, full_size=True)
            name = checkpoint
        onnx_dir = work / (arch or "openai")
        export_onnx(name, str(work), str(onnx_dir))
        loaded = load(name, "cpu", str(work))
        runs[label] = (loaded, start_session(str(onnx_dir / TEXTUAL_FILE)), start_session(str(onnx_dir / VISUAL_FILE)))
    times = {label: {"text": [], "image": [], "embed": []} for label in runs}
    batch = {label: torch.stack([loaded.preprocess(image)] * args.batch) for label, (loaded, _, _) in runs.items()}
    for _ in range(args.rounds):
        for label, (loaded, text, visual) in runs.items():
            start = time.perf_counter()
            encode_text(text, tokenize([PROMPT], spec=loaded.text)[0])
            middle = time.perf_counter()
            encode_image(visual, to_pixels(image, loaded.pixels)[None])
            end = time.perf_counter()
            with torch.inference_mode():
                loaded.model.encode_image(batch[label])
            times[label]["text"].append(middle - start)
            times[label]["image"].append(end - middle)
            times[label]["embed"].append(args.batch / (time.perf_counter() - end))
    print(f"{args.rounds} rounds, torch threads {torch.get_num_threads()}, batch {args.batch}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| model | image size | query text ms | query image ms | embedding images/s |")
    print("|---|---|---|---|---|")
    for label, (loaded, _, _) in runs.items():
        t = times[label]
        print(f"| {label} | {loaded.pixels.size} | {1000 * statistics.median(t['text']):.1f} | "
              f"{1000 * statistics.median(t['image']):.1f} | {statistics.median(t['embed']):.1f} |")


if __name__ == "__main__":
    main()
