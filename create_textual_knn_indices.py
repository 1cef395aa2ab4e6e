"""Prompt side, step 4: an autofaiss index over OUT_DIR/textual_embeddings, in OUT_DIR/knn_indices.

    python create_textual_knn_indices.py [--MAX_INDEX_MEMORY=4G]
"""

from prompt_search.cli import load_config, run
from prompt_search.index.build import create_index


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    create_index(cfg.OUT_DIR, "textual", cfg.MAX_INDEX_MEMORY, cfg.CURRENT_MEMORY_AVAILABLE,
                 cfg.MAX_INDEX_QUERY_TIME_MS, cfg.DISTRIBUTOR, cfg.SPARK_MASTER, cfg.INDEX_KEY, cfg.INDEX_RECALL)
    print("next: python test_visual_knn_index.py (it searches every index that exists)")


if __name__ == "__main__":
    run(main)
