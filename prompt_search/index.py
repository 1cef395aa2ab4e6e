"""Step 4: an autofaiss index over an embeddings folder, with the ids in the index's own order.

Outputs, in index_dir, for a name like "visual":
  {name}_prompts.index        the faiss index (inner product: cosine on normalised vectors)
  {name}_prompts_infos.json   autofaiss's account of what it built
  {name}_ids.npy              ids[i] is the id of the index's vector i (unicode array, no pickle)
"""

import glob
import os
from dataclasses import dataclass

import numpy as np

from prompt_search.cli import UserError
from prompt_search.files import atomic_path

ALIGNMENT_SAMPLE = 100  # stored vectors searched after a build to check that ids line up


@dataclass
class IndexPaths:
    index: str
    infos: str
    ids: str


def index_paths(index_dir: str, name: str) -> IndexPaths:
    return IndexPaths(
        index=os.path.join(index_dir, f"{name}_prompts.index"),
        infos=os.path.join(index_dir, f"{name}_prompts_infos.json"),
        ids=os.path.join(index_dir, f"{name}_ids.npy"),
    )


def embedding_files(folder: str) -> list[tuple[str, str]]:
    """(embeddings file, ids file) pairs in the lexicographic order autofaiss reads them."""
    files = sorted(glob.glob(os.path.join(folder, "embeddings", "*.npy")))
    pairs = [(path, os.path.join(folder, "ids", os.path.basename(path))) for path in files]
    for _, ids_path in pairs:
        if not os.path.isfile(ids_path):
            raise UserError(f"{ids_path} is missing: rerun the embeddings step to complete {folder}")
    return pairs


def build_index(folder: str, paths: IndexPaths, max_memory: str, memory_available: str, max_query_ms: float) -> dict:
    """Rebuild the index and its ids from the current embeddings; check alignment; replace the old ones."""
    from autofaiss import build_index as autofaiss_build  # heavy import, only for this step

    pairs = embedding_files(folder)
    if not pairs:
        raise UserError(f"no embeddings in {os.path.join(folder, 'embeddings')}: run the embeddings step first")
    ids = np.concatenate([np.load(ids_path, allow_pickle=False) for _, ids_path in pairs])
    with atomic_path(paths.index) as index_tmp, atomic_path(paths.infos) as infos_tmp, \
            atomic_path(paths.ids) as ids_tmp:
        index, infos = autofaiss_build(
            embeddings=os.path.join(folder, "embeddings"),
            index_path=index_tmp,
            index_infos_path=infos_tmp,
            metric_type="ip",
            max_index_memory_usage=max_memory,
            current_memory_available=memory_available,
            max_index_query_time_ms=max_query_ms,
            verbose=40,
        )
        if index is None or index.ntotal != len(ids):
            raise UserError(f"autofaiss indexed {getattr(index, 'ntotal', 0)} vectors but {folder} holds {len(ids)}")
        with open(ids_tmp, "wb") as f:
            np.save(f, ids)
        check_alignment(index, ids, pairs)
    infos["size on disk"] = os.path.getsize(paths.index)
    return infos


def check_alignment(index, ids: np.ndarray, pairs: list[tuple[str, str]], k: int = 10) -> None:
    """Search a sample of stored vectors; each must find its own id among its top k, or ids and index disagree."""
    rng = np.random.default_rng(0)
    queries, expected = [], []
    for vectors_path, ids_path in pairs:
        vectors, batch_ids = np.load(vectors_path, allow_pickle=False), np.load(ids_path, allow_pickle=False)
        if len(vectors) != len(batch_ids):
            raise UserError(f"{vectors_path} holds {len(vectors)} vectors but {ids_path} {len(batch_ids)} ids")
        pick = rng.choice(len(vectors), size=min(len(vectors), max(1, ALIGNMENT_SAMPLE // len(pairs))), replace=False)
        queries.append(vectors[pick])
        expected += list(batch_ids[pick])
    _, labels = index.search(np.concatenate(queries).astype(np.float32), min(k, index.ntotal))
    misses = [want for want, found in zip(expected, labels, strict=True) if want not in set(ids[found[found >= 0]])]
    if misses:
        raise UserError(f"index and ids disagree: {len(misses)} of {len(expected)} stored vectors did not find "
                        f"their own id (first: {misses[0]}); nothing was replaced")


def create_index(out_dir: str, name: str, max_memory: str, memory_available: str, max_query_ms: float) -> None:
    """Build out_dir/knn_indices/{name}_* from out_dir/{name}_embeddings and say what was built."""
    paths = index_paths(os.path.join(out_dir, "knn_indices"), name)
    infos = build_index(os.path.join(out_dir, f"{name}_embeddings"), paths, max_memory, memory_available,
                        max_query_ms)
    print(f"{paths.index}: {infos['index_key']} index of {infos['nb vectors']} vectors of dimension "
          f"{infos['vectors dimension']}, {infos['size on disk'] / 1e6:.2f} MB on disk "
          f"(memory budget {max_memory})")
    print(f"ids in {paths.ids}, autofaiss infos in {paths.infos}")
