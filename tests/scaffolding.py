"""Scaffolding of the tests and benchmarks, not of the pipeline: CLIP models with random weights (real weights
cannot be downloaded everywhere), the real data files copied from $PROMPT_SEARCH_DATA, and an index set made from
vectors at hand. Benchmarks put this folder on their path to import it."""

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prompt_search.data_files import check_sha256
from prompt_search.embedding.set_writer import MANIFEST, save_batch
from prompt_search.errors import UserError
from prompt_search.index.build import build_index
from prompt_search.models.names import CONFIG_SUFFIX, OPEN_CLIP, model_fingerprint
from prompt_search.settings import IndexSettings
from prompt_search.storage import atomic_path


def save_random_clip(path: str, full_size: bool = False, seed: int = 0) -> None:
    """Save a CLIP of the real architecture with random weights, in a file clip.load(path) reads.

    Real weights cannot be downloaded everywhere; tests use the tiny one, speed benchmarks the
    full-size ViT-B/32 (speed does not depend on the values).
    """
    import torch  # torch and the model packages when a model is made: the data files' users need none of them
    from clip.model import CLIP

    torch.manual_seed(seed)
    if full_size:  # ViT-B/32
        model = CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)
    else:
        model = CLIP(32, 224, 2, 64, 32, 77, 49408, 64, 1, 2)
    torch.save(model.state_dict(), path)


def save_random_open_clip(path: str, arch: str, seed: int = 0) -> None:
    """Save an OpenCLIP model of arch (a name or a config .json) with random weights, a checkpoint that
    open_clip:ARCH/path loads.

    Real weights cannot be downloaded everywhere; tests use a tiny config, speed benchmarks full-size ones.
    """
    import open_clip
    import torch

    from prompt_search.models.clip import register_config  # imports torch

    if arch.endswith(CONFIG_SUFFIX):
        arch = register_config(f"{OPEN_CLIP}{arch}/{path}", arch)
    torch.manual_seed(seed)
    torch.save(open_clip.create_model(arch, pretrained=None).state_dict(), path)


# Tests and benchmarks find the real data files (1k.csv, prompt-search.png) in the folder this variable names;
# the pipeline itself downloads them.
DATA_VARIABLE = "PROMPT_SEARCH_DATA"


class MissingDataFile(UserError):
    """$PROMPT_SEARCH_DATA is unset or its folder lacks the file: tests skip, benchmarks stop."""


def data_file_from_env(name: str, sha256: str, dest_dir: str) -> str:
    """The file `name` of the folder $PROMPT_SEARCH_DATA, copied into dest_dir and checked against its sha256 (a
    UserError if it differs; MissingDataFile if there is no such file)."""
    folder = os.environ.get(DATA_VARIABLE)
    source = os.path.join(folder, name) if folder else ""
    if not os.path.isfile(source):
        where = f"{DATA_VARIABLE}={folder} has no {name}" if folder else f"{DATA_VARIABLE} is not set"
        raise MissingDataFile(f"real {name} not available ({where}): set {DATA_VARIABLE} to a folder holding it")
    path = os.path.join(dest_dir, name)
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
        check_sha256(tmp, sha256, source, path)
    return path


def index_vectors(out_dir: str, name: str, vectors: np.ndarray, ids: list[str], model_name: str,
                  columns: dict[str, list] | None = None) -> None:
    """out_dir/{name}_embeddings holding these vectors and ids as one batch, and its index set built by
    step 4: for tests and benchmarks that have their vectors already. columns: each id's metadata (prompt, seed...),
    as step 1's table."""
    folder = os.path.join(out_dir, f"{name}_embeddings")
    save_batch(folder, 0, vectors, ids, [])
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump({"model": model_fingerprint(model_name)}, f)
    metadata = ""
    if columns is not None:
        metadata = os.path.join(out_dir, f"{name}_metadata.parquet")
        pq.write_table(pa.table({"id": ids, **columns}), metadata)
    build_index(folder, os.path.join(out_dir, "knn_indices", name), IndexSettings("1G", "2G", 10.0), metadata)
