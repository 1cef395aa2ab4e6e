"""Prompt side, step 3: CLIP text embeddings of each distinct prompt of OUT_DIR/metadata.parquet,
into OUT_DIR/textual_embeddings (same layout and restart rules as the images).

    python extract_textual_clip_embeddings.py [--BATCH_SIZE=128] [--MODEL=ViT-B/32]

Needs no downloaded image: the prompt search works even when no link answers.
"""

import os

from config_reader import load_config
from prompt_search.cli import run
from prompt_search.embedding.textual import embed_prompts
from prompt_search.errors import UserError
from prompt_search.layout import METADATA_FILE, embeddings_set, index_set
from prompt_search.output_sets import withdraw_set
from prompt_search.settings import EmbedSettings


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    folder = embeddings_set(cfg.OUT_DIR, "textual")
    metadata_file = os.path.join(cfg.OUT_DIR, METADATA_FILE)
    embedded, empty = embed_prompts(metadata_file, folder, EmbedSettings.of(cfg))
    if not embedded:  # a prompt side left from an earlier table would show that table's prompts
        withdrawn = [path for path in (folder, index_set(cfg.OUT_DIR, "textual"))
                     if withdraw_set(path)]
        raise UserError(f"no prompts in {metadata_file}: nothing to embed"
                        + (f"; removed the prompt side made from an earlier table: {', '.join(withdrawn)}"
                           if withdrawn else ""))
    print(f"{folder}: {embedded} distinct prompts embedded ({empty} rows have no prompt)")
    print("next: python create_textual_knn_indices.py")


if __name__ == "__main__":
    run(main)
