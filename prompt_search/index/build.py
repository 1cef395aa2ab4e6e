"""Step 4: an autofaiss index over an embeddings set, with the ids and vectors in the index's own order.

Output set OUT_DIR/knn_indices/NAME (NAME visual or textual; published as one: see output_sets.py):
  knn.index     the faiss index (inner product: cosine on normalised vectors)
  infos.json    autofaiss's account of what it built
  items.arrow   row i describes vector i: id, image path, prompt, link and metadata (see items.py)
  vectors.npy   float16 N x D, row i the stored vector i: to re-rank candidates and fold near-duplicates
  keywords/     the keyword index over each row's prompt (tantivy, BM25: see keyword_index.py)
  source.json   the model the vectors came from, their dimension and count, whether the index's codes are
                lossy (then queries re-rank that many candidates against vectors.npy), and the embeddings' manifest

Alignment holds by construction: ids and vectors are read from the embeddings files in the order
autofaiss's own reader lists them (embedding_reader.get_file_list), and the counts must agree. A
sample of positions is then checked against the source files: the id, and the index's reconstruction
of the vector (exact under ties, and tolerant of lossy codes such as PQ).
"""

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pyarrow as pa

from prompt_search import layout, storage
from prompt_search.embedding.set_writer import MANIFEST
from prompt_search.errors import UserError
from prompt_search.index.choice import (
    RERANK_CANDIDATES,
    IndexChoice,
    choose_index,
    distributed_choice,
    tune_search,
)
from prompt_search.index.embedding_files import SourceFile, source_files
from prompt_search.index.fast_scan import build_fast_scan
from prompt_search.index.keyword_index import build_keywords
from prompt_search.index.scores import Prompts, scores_table
from prompt_search.items import ItemTable, write_items
from prompt_search.layout import (
    IMAGES_FILE,
    INDEX_FILE,
    INFOS_FILE,
    ITEMS_FILE,
    METADATA_FILE,
    SOURCE_FILE,
    VECTORS_FILE,
)
from prompt_search.output_sets import beside_set, local_copy, local_published_file, output_set, published_set
from prompt_search.settings import EmbedSettings, IndexSettings
from prompt_search.spark import session_for
from prompt_search.storage import is_url

ALIGNMENT_SAMPLE = 1000  # stored positions checked against the source files after a build, whatever their number
LOSSY_MISSES = 0.02  # share of sampled positions a lossy code (PQ...) may reconstruct nearer another source vector
PARTS_FOLDER = "parts"  # autofaiss's distributed parts, in the set (at a URL: beside it), then removed
NEAR_DUPLICATE = 0.99  # source vectors this similar are the same picture to the alignment check


def build_index(embeddings: str, index_set: str, settings: IndexSettings, metadata_file: str = "",
                stamps_file: str = "", prompts: Prompts | None = None) -> dict:
    """Build the index set at index_set from the embeddings set at embeddings; publish it only if aligned. Returns
    autofaiss's infos, with ours (the keyword index's account: keyword_index.build_keywords).

    Its item table joins in the rows of metadata_file (step 1's table) by id, when there is one, the stamps of
    stamps_file (step 1 for a folder's), when there are some, and each image's scores (scores.py): its adherence to
    its prompt when prompts says where the prompts' vectors are, its aesthetic score with settings.aesthetic_model.
    distributor "pyspark": autofaiss adds the vectors in Spark tasks, in parts it merges (spark.py's session).
    index_key: a faiss index_factory string (autofaiss tunes its search time), or "" for choose_index's
    choice, whose nprobe is then tuned to index_recall (recall@10, tune_search).
    """
    published = published_set(embeddings)  # resolved once: every read below is of this one set
    # at a URL, this machine's copy: the checks and a local autofaiss read local files
    folder = local_copy(embeddings, published) if published else None
    files = source_files(folder) if folder else []
    if not files:
        raise UserError(f"no embeddings in {embeddings}: run the embeddings step first")
    with open(os.path.join(folder, MANIFEST)) as f:
        manifest = json.load(f)
    total = files[-1].start + files[-1].count
    dimension = np.load(files[0].vectors, mmap_mode="r").shape[1]
    if settings.index_key:
        _check_index_key(settings.index_key, dimension)
    choice = distributed_choice if settings.distributor == "pyspark" else choose_index
    chosen = None if settings.index_key else choice(total, dimension, settings.max_index_memory,
                                                    settings.max_index_query_time_ms)
    index_key = settings.index_key or chosen.key
    # our own choice's nprobe is tuned to recall below: autofaiss's tuning to search time is skipped
    index_param = "nprobe=1" if chosen and chosen.key else None
    with (
        output_set(index_set) as out,
        _autofaiss_opq_keywords(),
        session_for(settings.distributor, settings.spark_master) as spark,
    ):
        if chosen and chosen.own_build:  # vectors.npy first: the build reads it
            ids = write_vectors(files, dimension, out)
            index, infos = build_fast_scan(os.path.join(out, VECTORS_FILE), index_key)
        else:
            index, infos = _autofaiss_index(folder if spark is None else published.folder, out, index_set, spark,
                                            replace(settings, index_key=index_key), index_param)
            ids = write_vectors(files, dimension, out)
        if index is None or index.ntotal != total:
            raise UserError(f"the index holds {getattr(index, 'ntotal', 0)} vectors but {folder} holds {total}")
        metadata = local_published_file(metadata_file)
        items_start = time.perf_counter()
        scores = scores_table(ids, out, metadata, manifest["model"], settings.aesthetic_model, prompts)
        write_items(os.path.join(out, ITEMS_FILE), ids,
                    [os.path.join(folder, IMAGES_FILE), metadata,
                     local_published_file(stamps_file) if stamps_file else "", scores], out)
        if scores:
            os.remove(scores)
        infos["items seconds"] = round(time.perf_counter() - items_start, 3)
        lossy = check_alignment(index, ItemTable(os.path.join(out, ITEMS_FILE)).ids(), files)
        keyword_start = time.perf_counter()
        keywords = infos["keywords"] = build_keywords(os.path.join(out, ITEMS_FILE), out)
        infos["keyword seconds"] = round(time.perf_counter() - keyword_start, 3)
        if index_param:
            infos.update(_tuned(index, os.path.join(out, VECTORS_FILE), lossy, settings.index_recall, chosen))
            _write_index(index, os.path.join(out, INDEX_FILE))
            with open(os.path.join(out, INFOS_FILE), "w") as f:
                json.dump(infos, f)
        source = {"model": manifest["model"], "dimension": int(index.d), "count": total, "lossy": lossy,
                  "candidates": infos.get("candidates", RERANK_CANDIDATES), "keywords": keywords,
                  "embeddings": manifest}
        with open(os.path.join(out, SOURCE_FILE), "w") as f:
            json.dump(source, f, indent=1)
        infos["size on disk"] = os.path.getsize(os.path.join(out, INDEX_FILE))
    return infos


def _autofaiss_index(embeddings: str, out: str, index_set: str, spark, settings: IndexSettings,
                     index_param: str | None) -> tuple:
    """autofaiss's build of the embeddings set's vectors into the set being written at out, and its infos.

    With spark, autofaiss adds the vectors in Spark tasks, in parts it merges: they go where every machine
    reaches them, the set being written, or beside it when that is at a URL (then a local build).
    """
    from autofaiss import build_index as autofaiss_build  # heavy import, only for this step

    parts = os.path.join(out, PARTS_FOLDER) if not is_url(index_set) else beside_set(index_set, f"-{PARTS_FOLDER}")
    try:
        return autofaiss_build(
            embeddings=os.path.join(embeddings, "embeddings"),
            index_path=os.path.join(out, INDEX_FILE),
            index_infos_path=os.path.join(out, INFOS_FILE),
            metric_type="ip",
            max_index_memory_usage=settings.max_index_memory,
            current_memory_available=settings.current_memory_available,
            max_index_query_time_ms=settings.max_index_query_time_ms,
            should_be_memory_mappable=True,  # IVF kinds: opened memory-mapped, a query costs the same at any size
            verbose=40,
            **({"index_key": settings.index_key} if settings.index_key else {}),
            **({"index_param": index_param} if index_param else {}),  # None: autofaiss tunes it to search time
            **({} if spark is None else {"distributed": "pyspark", "temporary_indices_folder": parts}),
        )
    finally:  # beside the set at a URL: a failed build must not leave them there
        storage.remove_tree(parts)


def _tuned(index, vectors_file: str, lossy: bool, recall_target: float, chosen: IndexChoice) -> dict:
    """infos.json's account of the search: why this index, and nprobe and candidates tuned to recall_target."""
    if chosen.exact:
        return {"index_param": "nprobe=1", "candidates": RERANK_CANDIDATES, "recall@10": 1.0, "search": chosen.why}
    tuned = tune_search(index, np.load(vectors_file, mmap_mode="r"), lossy, recall_target)
    return {"index_param": f"nprobe={tuned.nprobe}", "candidates": tuned.candidates,
            "recall@10": round(tuned.recall, 4),
            "search": f"{chosen.why}; tuned to recall@10 {recall_target} on noisy and shifted copies of stored vectors"}


def _write_index(index, path: str) -> None:
    """The index as tuned, without the direct map the alignment check may have added (queries do not use it)."""
    import faiss

    faiss.extract_index_ivf(index).make_direct_map(False)
    faiss.write_index(index, path)


def _check_index_key(index_key: str, dimension: int) -> None:
    """Refuse an INDEX_KEY autofaiss cannot make for these vectors before any work, in one line."""
    import faiss
    from autofaiss.indices.index_factory import index_factory

    try:
        with _autofaiss_opq_keywords():
            index_factory(dimension, index_key, faiss.METRIC_INNER_PRODUCT)
    except (ValueError, RuntimeError) as error:
        reason = re.sub(r"^Error in .*?\.(cpp|h):\d+: (Error: )?", "", str(error).strip().splitlines()[0])
        raise UserError(f"INDEX_KEY {index_key!r} cannot be built for {dimension}-d vectors: {reason}") from None


@contextmanager
def _autofaiss_opq_keywords() -> Iterator[None]:
    """Let autofaiss make OPQ indices: it calls faiss.OPQMatrix(d, M=..., d2=...), and faiss 1.15 names that
    argument M_in, so every compressed index autofaiss picks for a large collection failed with a TypeError."""
    import faiss

    original = faiss.OPQMatrix
    faiss.OPQMatrix = lambda d=0, M=1, d2=-1: original(d, M, d2)  # noqa: N803 (autofaiss's keyword)
    try:
        yield
    finally:
        faiss.OPQMatrix = original


def write_vectors(files: list[SourceFile], dimension: int, out: str) -> pa.ChunkedArray:
    """vectors.npy (float16) in index order, streamed file by file; returns the ids in the same order."""
    total = files[-1].start + files[-1].count
    vectors = np.lib.format.open_memmap(os.path.join(out, VECTORS_FILE), "w+", np.float16, (total, dimension))
    ids = []
    for f in files:
        ids.append(pa.array(np.load(f.ids, allow_pickle=False), pa.string()))
        vectors[f.start : f.start + f.count] = np.load(f.vectors, allow_pickle=False)
    vectors.flush()
    return pa.chunked_array(ids, pa.string())


def check_alignment(index, ids, files: list[SourceFile], sample: int = ALIGNMENT_SAMPLE) -> bool:
    """Check sampled index positions against the source files, or refuse the build; return whether the code is lossy.

    Each sampled position's id must be its source row's id, and the index's reconstruction of its
    vector must lie nearest its source vector (or a near-identical one: ties are no error) among the
    sampled source vectors; a lossy code may miss a few.
    """
    starts = np.array([f.start for f in files])
    positions = np.sort(np.random.default_rng(0).choice(len(ids), size=min(sample, len(ids)), replace=False))
    source_ids, source_vectors = [], []
    for position in positions:
        f = files[np.searchsorted(starts, position, side="right") - 1]
        row = position - f.start
        source_ids.append(str(np.load(f.ids, mmap_mode="r")[row]))
        source_vectors.append(np.load(f.vectors, mmap_mode="r")[row])
    wrong = [(p, want) for p, want in zip(positions, source_ids, strict=True) if str(ids[int(p)]) != want]
    if wrong:
        p, want = wrong[0]
        raise UserError(f"index and ids disagree: {len(wrong)} of {len(positions)} sampled positions hold another "
                        f"row's id (position {p}: {ids[int(p)]}, its vector is {want}'s); nothing was replaced")
    misses, lossy = _reconstruction_misses(index, positions, np.array(source_vectors, dtype=np.float32))
    if misses > (LOSSY_MISSES * len(positions) if lossy else 0):
        raise UserError(f"index and ids disagree: {misses} of {len(positions)} sampled vectors of the index are not "
                        "the source vectors at their positions; nothing was replaced")
    return lossy


def _reconstruction_misses(index, positions: np.ndarray, source: np.ndarray) -> tuple[int, bool]:
    """How many reconstructions lie nearer another sampled source vector than their own; whether the code is lossy."""
    import faiss

    try:
        rebuilt = index.reconstruct_batch(positions)
    except RuntimeError:  # an inverted-file index finds a position's vector only through its direct map
        faiss.extract_index_ivf(index).make_direct_map()
        rebuilt = index.reconstruct_batch(positions)
    lossy = not np.allclose(rebuilt, source, atol=1e-4)
    rebuilt /= np.linalg.norm(rebuilt, axis=1, keepdims=True).clip(1e-12)
    similarity = rebuilt @ source.T
    nearest = similarity.argmax(axis=1)
    own = np.arange(len(positions))
    same_picture = np.einsum("ij,ij->i", source[nearest], source) >= NEAR_DUPLICATE
    return int(np.count_nonzero((nearest != own) & ~same_picture)), lossy


def create_index(out_dir: str, name: str, settings: IndexSettings, embed: EmbedSettings | None = None) -> None:
    """Build the set out_dir/knn_indices/{name} from out_dir/{name}_embeddings and say what was built. For the
    images (visual), with embed: each image's adherence to its prompt, its prompts' vectors from step 3''s set or
    embedded with embed."""
    index_set = layout.index_set(out_dir, name)
    prompts = Prompts(layout.embeddings_set(out_dir, "textual"), embed) if embed and name == "visual" else None
    if name != "visual":  # the aesthetic predictor scores images: a prompt's vector is no picture
        settings = replace(settings, aesthetic_model="")
    infos = build_index(layout.embeddings_set(out_dir, name), index_set, settings,
                        os.path.join(out_dir, METADATA_FILE), os.path.join(out_dir, layout.STAMPS_FILE), prompts)
    recall = f", recall@10 {infos['recall@10']}" if "recall@10" in infos else ""
    print(f"{index_set}: {infos['index_key']} index ({infos['index_param']}{recall}) of {infos['nb vectors']} "
          f"vectors of dimension {infos['vectors dimension']}, {infos['size on disk'] / 1e6:.2f} MB on disk "
          f"(memory budget {settings.max_index_memory}); keyword index of {infos['keywords']['documents']} prompts "
          f"in {infos['keyword seconds']:.1f} s")
