"""Issue 14: serve.py's warm latency and throughput at 1M vectors, against the script path (step 5), on loopback;
issue 31: a sorted, grouped, filtered query against a plain one.

    .venv/bin/python benchmarks/bench_serve.py [--rows=1000000] [--work=/tmp/bench_serve] [--clients=32]

A full-size ViT-B/32 of random weights (speed does not depend on the values), exported to ONNX once; 1M random
unit vectors in an IVF-PQ index (lossy: re-ranked against vectors.npy, as autofaiss's kinds are) with an item table
of as many rows; both sides of the server use that set. The work folder is kept for later runs. Requests go to
127.0.0.1 only, a bounded number. Prints a markdown report.
"""

import argparse
import base64
import concurrent.futures
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # scaffolding.py: random-weight models, the real data files
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.ipc as ipc  # noqa: E402
import requests  # noqa: E402
from PIL import Image  # noqa: E402

from prompt_search.models.names import model_fingerprint  # noqa: E402
from prompt_search.models.onnx_clip import TEXTUAL_FILE, encode_text, start_session  # noqa: E402
from prompt_search.models.tokenizer import tokenize  # noqa: E402

PROMPT = "image of a blue robot with red background"
DIM = 512
NPROBE = 16


def build(work: Path, rows: int) -> str:
    """The model checkpoint, its ONNX export in work/out/onnx and a published index set of rows vectors."""
    checkpoint = work / "vit-b-32-random.pt"
    onnx_dir = work / "out" / "onnx"
    if not (onnx_dir / TEXTUAL_FILE).exists():
        from scaffolding import save_random_clip

        from prompt_search.models.onnx_export import export_onnx

        save_random_clip(str(checkpoint), full_size=True)
        export_onnx(str(checkpoint), str(work), str(onnx_dir))
    folder = work / "out" / "knn_indices" / f"set-{rows}"
    if not (folder / "source.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((rows, DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        np.save(folder / "vectors.npy", vectors.astype(np.float16))
        index = faiss.index_factory(DIM, f"IVF{max(64, int(rows ** 0.5))},PQ64", faiss.METRIC_INNER_PRODUCT)
        index.train(vectors[rng.choice(rows, min(rows, 50_000), replace=False)])
        index.add(vectors)
        index.nprobe = NPROBE
        faiss.write_index(index, str(folder / "knn.index"))
        del vectors
        ids = pa.array([f"{i:016x}" for i in range(rows)])
        table = pa.table({"id": ids, "prompt": pa.array([f"{PROMPT} number {i}" for i in range(rows)]),
                          "url": pa.array([f"https://example.invalid/{i}.png" for i in range(rows)]),
                          "width": pa.array(np.full(rows, 512, np.int32)),
                          "height": pa.array(rng.choice([512, 768], rows).astype(np.int32)),
                          "seed": pa.array(np.arange(rows, dtype=np.int64)),
                          "cfg_scale": pa.array(np.full(rows, 7.0, np.float32)),
                          "num_steps": pa.array(np.full(rows, 50, np.int32)),
                          "timestamp": pa.array(1660000000 + np.arange(rows), pa.timestamp("s", tz="UTC")),
                          # step 4's scores (issue 31): adherence as CLIP cosines are spread, 4 images a prompt
                          "adherence": pa.array(rng.normal(0.28, 0.05, rows).astype(np.float32)),
                          "prompt_group": pa.array(np.arange(rows, dtype=np.uint64) // 4)})
        with pa.OSFile(str(folder / "items.arrow"), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=65_536)
        (folder / "source.json").write_text(json.dumps({"model": model_fingerprint(str(checkpoint)), "lossy": True}))
    for side in ("visual", "textual"):
        link = work / "out" / "knn_indices" / side
        if link.is_symlink():
            link.unlink()
        link.symlink_to(folder.name)
    return str(checkpoint)


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    return f"{statistics.median(values):.1f} / {values[min(len(values) - 1, int(0.99 * len(values)))]:.1f}"


def timed_requests(url: str, bodies: list[dict]) -> tuple[list[float], list[dict]]:
    latencies, timings = [], []
    with requests.Session() as session:
        for body in bodies:
            start = time.perf_counter()
            answer = session.post(url, json=body, timeout=60)
            latencies.append((time.perf_counter() - start) * 1e3)
            assert answer.status_code == 200, answer.text
            app = answer.headers["Server-Timing"].rsplit("app;dur=", 1)[1]  # the whole request inside the app
            timings.append({**answer.json()["timings_ms"], "app": float(app)})
    return latencies, timings


def load(url: str, clients: int, seconds: float, body: dict) -> tuple[int, int, list[float]]:
    deadline = time.monotonic() + seconds

    def client(_: int) -> tuple[int, list[float]]:
        errors, latencies = 0, []
        with requests.Session() as session:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                answer = session.post(url, json=body, timeout=60)
                latencies.append((time.perf_counter() - start) * 1e3)
                errors += answer.status_code != 200
        return errors, latencies

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(client, range(clients)))
    latencies = [ms for _, found in outcomes for ms in found]
    return len(latencies), sum(errors for errors, _ in outcomes), latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--work", default="/tmp/bench_serve")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    checkpoint = build(work, args.rows)
    print(f"built or found the work folder in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    image = work / "query.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (512, 512, 3), np.uint8)).save(image)
    common = ["--OUT_DIR=out", f"--MODEL={checkpoint}", "--QUERY_THREADS=1", "--IMG_DIR=none"]

    session = start_session(str(work / "out" / "onnx" / TEXTUAL_FILE), 1)
    tokens = tokenize([PROMPT])[0]
    bare = []
    for _ in range(args.requests):
        start = time.perf_counter()
        encode_text(session, tokens)
        bare.append((time.perf_counter() - start) * 1e3)

    script = []
    for _ in range(2):  # whole processes: Python, the indices, the sessions, both queries on both sides
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "test_visual_knn_index.py"), *common, "--COMPARE_WITH_TORCH=False",
                        f"--INPUT_IMG_PATH={image}", f"--INPUT_PROMPT={PROMPT}"], cwd=work, check=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        script.append(time.perf_counter() - start)

    server = subprocess.Popen([sys.executable, str(REPO / "serve.py"), *common, "--SERVE_PORT=0"], cwd=work,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        start = time.perf_counter()
        base = server.stdout.readline().split()[2].rstrip("/")
        startup = time.perf_counter() - start
        url = f"{base}/api/search"
        picture = base64.b64encode(image.read_bytes()).decode()
        warm = {"text": PROMPT, "num_results": 10}
        timed_requests(url, [warm] * 3)
        text_ms, text_parts = timed_requests(url, [{**warm, "text": f"{PROMPT} {i}"} for i in range(args.requests)])
        image_ms, image_parts = timed_requests(url, [{"image": picture, "num_results": 10}] * (args.requests // 2))
        filtered_ms, _ = timed_requests(url, [{**warm, "filters": {"height": {"min": 700}, "seed": {"max": 800_000}}}]
                                        * (args.requests // 2))
        # issue 31: sorted by adherence, one per prompt, filtered, against the plain query, interleaved
        triage = {"sort": "adherence", "group": "prompt", "filters": {"adherence": {"min": 0.2}}}
        pairs = [body for i in range(args.requests) for body in ({**warm, "text": f"{PROMPT} {i}"},
                                                                  {**warm, "text": f"{PROMPT} {i}", **triage})]
        paired_ms, _ = timed_requests(url, pairs)
        plain_ms, triage_ms = paired_ms[0::2], paired_ms[1::2]
        count, errors, loaded = load(url, args.clients, 5.0, warm)
    finally:
        server.terminate()
        server.wait(timeout=30)

    def split(parts: list[dict]) -> str:
        return " / ".join(f"{statistics.median(p[name] for p in parts):.1f}"
                          for name in ("encode", "search", "lookup", "app"))

    print(f"## bench_serve.py, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}\n")
    print(f"`{' '.join(sys.argv)}`: {args.rows:,} vectors (IVF-PQ64, nprobe {NPROBE}, re-ranked), full-size ViT-B/32, "
          f"QUERY_THREADS=1; server start {startup:.1f} s; load average {os.getloadavg()[0]:.1f}\n")
    print("| what | p50 / p99 ms | encode / search / lookup / whole request in the app ms (p50, server side) |\n"
          "|---|---|---|")
    print(f"| bare text encoder, same prompt, in process | {percentiles(bare)} | |")
    print(f"| text request, end to end | {percentiles(text_ms)} | {split(text_parts)} |")
    print(f"| image request (512x512 PNG, base64), end to end | {percentiles(image_ms)} | {split(image_parts)} |")
    print(f"| text request with filters (height ≥ 700, seed ≤ 800k) | {percentiles(filtered_ms)} | |")
    print(f"| text request, plain (interleaved with the next) | {percentiles(plain_ms)} | |")
    print(f"| text request sorted by adherence, one per prompt, adherence ≥ 0.2 | {percentiles(triage_ms)} | "
          f"p50 {statistics.median(triage_ms) / statistics.median(plain_ms):.2f}x the plain one |")
    print(f"| {args.clients} concurrent clients, 5 s, text | {percentiles(loaded)} | {count / 5:.1f} requests/s, "
          f"{errors} errors |")
    print(f"| script path (test_visual_knn_index.py, one process: text + image on both sides) | "
          f"{statistics.median(script) * 1e3:.0f} | |")


if __name__ == "__main__":
    main()
