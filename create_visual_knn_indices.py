"""Step 4: an autofaiss index over OUT_DIR/visual_embeddings, written to OUT_DIR/knn_indices.

    python create_visual_knn_indices.py [--MAX_INDEX_MEMORY=4G] [--MAX_INDEX_QUERY_TIME_MS=10]

Always rebuilt from the current embeddings, ids included; a build whose ids do not line up
with its vectors is refused and the previous index stays. Each image's adherence to its prompt is computed here (its
prompt's vector from step 3', or embedded with MODEL), and its aesthetic score with AESTHETIC_MODEL.
"""

from config_reader import load_config
from prompt_search.cli import run
from prompt_search.index.build import create_index
from prompt_search.settings import EmbedSettings, IndexSettings


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    create_index(cfg.OUT_DIR, "visual", IndexSettings.of(cfg), EmbedSettings.of(cfg))
    print("next: python test_visual_knn_index.py")


if __name__ == "__main__":
    run(main)
