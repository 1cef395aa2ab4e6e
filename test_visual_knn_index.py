"""Step 5: search the indices in OUT_DIR/knn_indices by text and by image, with ONNX CLIP on the CPU.

    python test_visual_knn_index.py [--INPUT_PROMPT="a red car"] [--INPUT_IMG_PATH=my.png] [--NUM_RESULTS=10]
                                    [--SEARCH_MODE=hybrid|semantic|keyword] [--SORT=adherence] [--GROUP=prompt]

The ONNX models are exported from MODEL into OUT_DIR/onnx on first use (that step needs torch).
"""

import config
from config_reader import load_config
from prompt_search.cli import run
from prompt_search.data_files import ensure_data_file
from prompt_search.layout import onnx_folder, results_page
from prompt_search.search.console import (
    check_prompt,
    compare_with_torch,
    encode_queries,
    print_results,
    read_image,
    search_queries,
)
from prompt_search.search.core import open_sides
from prompt_search.search.encoder import ensure_export, open_encoder
from prompt_search.search.gallery import write_gallery
from prompt_search.settings import QuerySettings


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    if cfg.INPUT_IMG_PATH == config.INPUT_IMG_PATH:
        ensure_data_file(cfg.INPUT_IMG_PATH, cfg.INPUT_IMG_URL, cfg.INPUT_IMG_SHA256)
    image = read_image(cfg.INPUT_IMG_PATH)
    sides = open_sides(cfg.OUT_DIR, cfg.MODEL)
    onnx_dir, settings = onnx_folder(cfg.OUT_DIR), QuerySettings.of(cfg)
    ensure_export(onnx_dir, settings)
    check_prompt(cfg.INPUT_PROMPT)
    encoder = open_encoder(onnx_dir, settings)
    queries = encode_queries(encoder, cfg.INPUT_PROMPT, image, cfg.INPUT_IMG_PATH, cfg.SEARCH_MODE)
    search_queries(queries, sides, cfg.NUM_RESULTS, cfg.DEDUPE_THRESHOLD, cfg.SORT, cfg.GROUP)
    print_results(queries)
    gallery = results_page(cfg.OUT_DIR)
    write_gallery(queries, gallery)
    print(f"\nall results as a page: {gallery}")
    if cfg.COMPARE_WITH_TORCH:
        compare_with_torch(queries, sides, cfg.MODEL, cfg.MODEL_DIR, image, cfg.NUM_RESULTS, cfg.DEDUPE_THRESHOLD)


if __name__ == "__main__":
    run(main)
