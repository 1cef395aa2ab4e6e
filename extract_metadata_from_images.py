"""Step 1 for a folder of your own generations: the prompt and settings inside each image -> OUT_DIR/metadata.

    python extract_metadata_from_images.py --IMG_DIR=path/to/your/images [--PREFERRED_METADATA=comfyui]

Reads what A1111/Forge, ComfyUI, InvokeAI, NovelAI and Fooocus write into their files (README: Your own
generations). Then run steps 3 to 5 with the same --IMG_DIR; no CSV and no download are needed.
"""

from config_reader import load_config
from prompt_search.cli import run
from prompt_search.errors import UserError
from prompt_search.sources.folder_metadata import extract_folder_metadata, print_summary


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    if not cfg.IMG_DIR:
        raise UserError("set --IMG_DIR to the folder of your images")
    summary = extract_folder_metadata(cfg.IMG_DIR, cfg.OUT_DIR, cfg.PREFERRED_METADATA)
    print_summary(summary, cfg.IMG_DIR, cfg.OUT_DIR)
    print(f"next: python extract_visual_clip_embeddings.py --IMG_DIR={cfg.IMG_DIR}")


if __name__ == "__main__":
    run(main)
