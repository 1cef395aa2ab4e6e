"""Step 1: open-prompts CSV -> img_links.txt, metadata.parquet and rejects.csv in OUT_DIR.

    python extract_img_links_from_csv.py [--CSV_FILE=path/to/open-prompts.csv] [--OUT_DIR=outputs]
"""

import config
from config_reader import load_config
from prompt_search.cli import run
from prompt_search.data_files import ensure_data_file
from prompt_search.sources.open_prompts import extract_links, print_summary
from prompt_search.storage import local_file


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    if cfg.CSV_FILE == config.CSV_FILE:
        ensure_data_file(cfg.CSV_FILE, cfg.CSV_URL, cfg.CSV_SHA256)
    with local_file(cfg.CSV_FILE) as csv_file:  # a CSV at a URL is read from a local copy
        summary = extract_links(csv_file, cfg.OUT_DIR, cfg.LINK_WORKERS)
    print_summary(summary, cfg.CSV_FILE, cfg.OUT_DIR)
    print("next: python download_images.py")


if __name__ == "__main__":
    run(main)
