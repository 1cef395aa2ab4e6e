"""Step 3: CLIP embeddings of the downloaded images (or any IMG_DIR) into OUT_DIR/visual_embeddings.

    python extract_visual_clip_embeddings.py [--BATCH_SIZE=128] [--IMG_DIR=my/images] [--MODEL=ViT-B/32]

On a GPU the model runs in fp16 and the GPU decodes the JPEGs too (DECODE); on the CPU the model runs in fp32.
Rerunning resumes where a run stopped; after images were added, renamed, changed or deleted, it embeds only
the new or changed contents and takes the other vectors from the set already published.
"""

import os

from prompt_search.cli import load_config, run
from prompt_search.embedding.visual import embed_images, print_summary


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    img_dir = cfg.IMG_DIR or os.path.join(cfg.OUT_DIR, "images")
    folder = os.path.join(cfg.OUT_DIR, "visual_embeddings")
    written, skipped = embed_images(img_dir, folder, cfg.MODEL, cfg.MODEL_DIR, cfg.DEVICE, cfg.BATCH_SIZE,
                                    cfg.NUM_WORKERS, cfg.DECODE, cfg.DISTRIBUTOR, cfg.SPARK_MASTER)
    print_summary(folder, written, skipped)
    print("next: python create_visual_knn_indices.py")


if __name__ == "__main__":
    run(main)
