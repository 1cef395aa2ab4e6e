"""Step 5: search the indices in OUT_DIR/knn_indices by text and by image, with ONNX CLIP on the CPU.

    python test_visual_knn_index.py [--INPUT_PROMPT="a red car"] [--INPUT_IMG_PATH=my.png] [--NUM_RESULTS=10]

The ONNX models are exported from MODEL into OUT_DIR/onnx on first use (that step needs torch).
"""

import os

import config
from prompt_search.cli import load_config, run
from prompt_search.data_files import ensure_data_file
from prompt_search.models.onnx_clip import is_current
from prompt_search.search.core import compare_with_torch, encode_queries, open_sides, print_results, read_image, search
from prompt_search.search.gallery import write_gallery
from prompt_search.storage import local_dir


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    if cfg.INPUT_IMG_PATH == config.INPUT_IMG_PATH:
        ensure_data_file(cfg.INPUT_IMG_PATH, cfg.INPUT_IMG_URL, cfg.INPUT_IMG_SHA256)
    image = read_image(cfg.INPUT_IMG_PATH)
    sides = open_sides(cfg.OUT_DIR, cfg.MODEL)
    onnx_dir = os.path.join(local_dir(cfg.OUT_DIR), "onnx")
    if not is_current(onnx_dir, cfg.MODEL):
        from prompt_search.models.onnx_export import export_onnx  # torch, only to export

        export_onnx(cfg.MODEL, cfg.MODEL_DIR, onnx_dir)
    queries = encode_queries(onnx_dir, cfg.INPUT_PROMPT, image, cfg.INPUT_IMG_PATH, cfg.QUANTIZE_INT8,
                             cfg.QUERY_THREADS)
    for query in queries:
        for side, searched in sides.items():
            query.hits[side] = search(searched, query.vector, cfg.NUM_RESULTS, cfg.DEDUPE_THRESHOLD)
    print_results(queries)
    gallery = os.path.join(local_dir(cfg.OUT_DIR), "results.html")
    write_gallery(queries, gallery)
    print(f"\nall results as a page: {gallery}")
    if cfg.COMPARE_WITH_TORCH:
        compare_with_torch(queries, sides, cfg.MODEL, cfg.MODEL_DIR, image, cfg.NUM_RESULTS, cfg.DEDUPE_THRESHOLD)


if __name__ == "__main__":
    run(main)
