"""Step 2: download the images of OUT_DIR/metadata.parquet into OUT_DIR/images with img2dataset.

    python download_images.py [--IMAGE_SIZE=224] [--DOWNLOAD_THREADS=64]

The reference's plain command still works too (ids are then recomputed from each image's URL):
    img2dataset --url_list=outputs/metadata/img_links.txt --output_folder=outputs/images --image_size=224 \
        --resize_mode=keep_ratio --enable_wandb=False
"""

import os

from config_reader import load_config
from prompt_search.children import die_with_spawner
from prompt_search.cli import run
from prompt_search.layout import METADATA_FILE, images_folder
from prompt_search.settings import DownloadSettings
from prompt_search.sources.download import download_images, print_summary

if __name__ == "__mp_main__":  # in each process img2dataset spawns, which imports this script first
    die_with_spawner()


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    images_dir = images_folder(cfg.OUT_DIR)
    summary = download_images(os.path.join(cfg.OUT_DIR, METADATA_FILE), images_dir, DownloadSettings.of(cfg))
    print_summary(summary, images_dir)
    print("next: python extract_visual_clip_embeddings.py")


if __name__ == "__main__":
    run(main)
