"""Step 2: download the images of OUT_DIR/metadata.parquet into OUT_DIR/images with img2dataset.

    python download_images.py [--IMAGE_SIZE=224] [--DOWNLOAD_THREADS=64]

The reference's plain command still works too (ids are then recomputed from each image's URL):
    img2dataset --url_list=outputs/metadata/img_links.txt --output_folder=outputs/images --image_size=224 \
        --resize_mode=keep_ratio --enable_wandb=False
"""

import os

from prompt_search.children import die_with_spawner
from prompt_search.cli import load_config, run
from prompt_search.sources.download import download_images, print_summary
from prompt_search.sources.open_prompts import METADATA_FILE

if __name__ == "__mp_main__":  # in each process img2dataset spawns, which imports this script first
    die_with_spawner()


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    images_dir = os.path.join(cfg.OUT_DIR, "images")
    summary = download_images(
        os.path.join(cfg.OUT_DIR, METADATA_FILE),
        images_dir,
        image_size=cfg.IMAGE_SIZE,
        resize_mode=cfg.RESIZE_MODE,
        threads=cfg.DOWNLOAD_THREADS,
        processes=cfg.DOWNLOAD_PROCESSES,
        timeout=cfg.DOWNLOAD_TIMEOUT,
        retries=cfg.DOWNLOAD_RETRIES,
        output_format=cfg.OUTPUT_FORMAT,
        distributor=cfg.DISTRIBUTOR,
        spark_master=cfg.SPARK_MASTER,
    )
    print_summary(summary, images_dir)
    print("next: python extract_visual_clip_embeddings.py")


if __name__ == "__main__":
    run(main)
