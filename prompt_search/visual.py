"""Step 3: CLIP image embeddings of every image in a folder, batch by batch (layout in embed.py)."""

import glob
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from prompt_search.cli import UserError
from prompt_search.clip_models import load
from prompt_search.embed import Batch, embed_items
from prompt_search.images import IMAGES_FILE, list_images, open_rgb
from prompt_search.model import choose_device


class ImageDataset(Dataset):
    """Item i: (pixels or None, id, path, reason it was skipped)."""

    def __init__(self, items: list[tuple[str, str]], preprocess):
        self.items, self.preprocess = items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item_id, path = self.items[i]
        try:
            return self.preprocess(open_rgb(path)), item_id, path, ""
        except (OSError, ValueError, SyntaxError) as error:  # PIL raises all three on bad files
            return None, item_id, path, f"{type(error).__name__}: {error}"


def collate(samples):
    good = [s for s in samples if s[0] is not None]
    pixels = torch.stack([s[0] for s in good]) if good else None
    return pixels, [s[1] for s in good], [(s[2], s[3]) for s in samples if s[0] is None]


def workers(num_workers: int) -> int:
    """-1: one decoding process per core, at most 8."""
    return min(os.cpu_count() or 1, 8) if num_workers < 0 else num_workers


def embed_images(img_dir: str, folder: str, model_name: str, model_dir: str, device: str, batch_size: int,
                 num_workers: int) -> tuple[int, list[tuple[str, str]]]:
    """Embed every image below img_dir into the set at folder; return (vectors written, skipped (path, reason)).

    An image whose id another image already has is skipped, so that an id always names one picture.
    """
    if not os.path.isdir(img_dir):
        raise UserError(f"image folder {img_dir} not found: run download_images.py, or set --IMG_DIR")
    items, rejected, sidecar_problems = list_images(img_dir)
    if sidecar_problems:
        sidecar, problem = sidecar_problems[0]
        print(f"{len(sidecar_problems)} sidecars give no usable id, so their images have their path as id "
              f"(first: {sidecar}: {problem})")
    if not items:
        if glob.glob(os.path.join(img_dir, "*.tar")):
            raise UserError(f"{img_dir} holds webdataset .tar shards: this step reads img2dataset's "
                            "OUTPUT_FORMAT=files; download again with --OUTPUT_FORMAT=files")
        raise UserError(f"no images in {img_dir}: nothing to embed (see download_images.py's summary)")

    def encode_batches(ranges: list[range]) -> Iterator[Batch]:
        chosen = choose_device(device)
        loaded = load(model_name, chosen, model_dir)
        model, preprocess = loaded.model, loaded.preprocess
        print(f"embedding {sum(map(len, ranges))} of {len(items)} images with {model_name} on {chosen} "
              f"in {loaded.dtype}")
        loader = DataLoader(ImageDataset(items, preprocess), batch_sampler=[list(r) for r in ranges],
                            num_workers=workers(num_workers), collate_fn=collate, pin_memory=chosen != "cpu")
        with torch.inference_mode():
            for pixels, ids, skipped in loader:
                vectors = np.empty((0, loaded.dim), np.float32)
                if ids:
                    vectors = model.encode_image(pixels.to(chosen, loaded.dtype)).float().cpu().numpy()
                yield vectors, ids, skipped

    paths = pa.table({"id": [i for i, _ in items], "path": [p for _, p in items]})
    skipped = embed_items(folder, items, model_name, batch_size, encode_batches, unit="img",
                          tables={IMAGES_FILE: paths}, rejected=rejected)
    return len(items) - len(skipped) + len(rejected), skipped


def print_summary(folder: str, written: int, skipped: list[tuple[str, str]]) -> None:
    print(f"{folder}: {written} embeddings, {len(skipped)} skipped")
    for source, reason in skipped[:20]:
        print(f"  skipped {source}: {reason}")
    if len(skipped) > 20:
        print(f"  ... all {len(skipped)} in {os.path.join(folder, 'skipped.csv')}")
