"""Step 4: an autofaiss index over OUT_DIR/visual_embeddings, written to OUT_DIR/knn_indices.

    python create_visual_knn_indices.py [--MAX_INDEX_MEMORY=4G] [--MAX_INDEX_QUERY_TIME_MS=10]

Always rebuilt from the current embeddings, ids included; a build whose ids do not line up
with its vectors is refused.
"""

import os

from prompt_search.cli import load_config, run
from prompt_search.index import build_index, index_paths, print_summary


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    paths = index_paths(os.path.join(cfg.OUT_DIR, "knn_indices"), "visual")
    infos = build_index(os.path.join(cfg.OUT_DIR, "visual_embeddings"), paths, cfg.MAX_INDEX_MEMORY,
                        cfg.CURRENT_MEMORY_AVAILABLE, cfg.MAX_INDEX_QUERY_TIME_MS)
    print_summary(paths, infos)
    print("next: python test_visual_knn_index.py")


if __name__ == "__main__":
    run(main)
