"""Prompt side, step 4: an autofaiss index over OUT_DIR/textual_embeddings, in OUT_DIR/knn_indices.

    python create_textual_knn_indices.py [--MAX_INDEX_MEMORY=4G]
"""

from config_reader import load_config
from prompt_search.cli import run
from prompt_search.index.build import create_index
from prompt_search.settings import IndexSettings


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    create_index(cfg.OUT_DIR, "textual", IndexSettings.of(cfg))
    print("next: python test_visual_knn_index.py (it searches every index that exists)")


if __name__ == "__main__":
    run(main)
