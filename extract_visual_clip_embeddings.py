"""Step 3: CLIP embeddings of the downloaded images (or any IMG_DIR) into OUT_DIR/visual_embeddings.

    python extract_visual_clip_embeddings.py [--BATCH_SIZE=128] [--IMG_DIR=my/images] [--MODEL=ViT-B/32]

On a GPU the model runs in fp16 and the GPU decodes the JPEGs too (DECODE); on the CPU the model runs in fp32.
Rerunning resumes where a run stopped; after images were added, renamed, changed or deleted, it embeds only
the new or changed contents and takes the other vectors from the set already published.
"""


from config_reader import load_config
from prompt_search.cli import run
from prompt_search.embedding.visual import embed_images, print_summary
from prompt_search.layout import embeddings_set, images_folder
from prompt_search.settings import EmbedSettings


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    folder = embeddings_set(cfg.OUT_DIR, "visual")
    written, skipped = embed_images(images_folder(cfg.OUT_DIR, cfg.IMG_DIR), folder, EmbedSettings.of(cfg))
    print_summary(folder, written, skipped)
    print("next: python create_visual_knn_indices.py")


if __name__ == "__main__":
    run(main)
