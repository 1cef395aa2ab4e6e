"""Where every output lives below OUT_DIR (README: The pipeline), spelled once: the steps, the scripts and the queries
all find a set by these names.

    metadata/            step 1's set: img_links.txt, metadata.parquet, rejects.csv (a folder's: stamps.parquet)
    images/              step 2's downloads (what step 3 embeds when IMG_DIR is "")
    visual_embeddings/   step 3's set, textual_embeddings/ step 3''s
    knn_indices/visual/  step 4's index set over visual_embeddings, knn_indices/textual/ step 4''s
    onnx/, results.html  step 5's models and page, on this machine (a remote OUT_DIR's copy: storage.local_dir)
    exports/             export_results.py's training sets, on this machine, when EXPORT_DIR is ""
"""

import os

from prompt_search.storage import local_dir

METADATA_SET = "metadata"  # OUT_DIR/metadata: the output set of step 1, these three files (see output_sets.py)
LINKS_FILE = os.path.join(METADATA_SET, "img_links.txt")
METADATA_FILE = os.path.join(METADATA_SET, "metadata.parquet")
REJECTS_FILE = os.path.join(METADATA_SET, "rejects.csv")
# step 1 for a folder: each image's stamp (sources/folder_metadata.py); step 4 joins it into the item table, so that
# serve.py --WATCH knows what each indexed row was made from
STAMPS_FILE = os.path.join(METADATA_SET, "stamps.parquet")
IMAGES_FOLDER = "images"
INDICES_FOLDER = "knn_indices"
ONNX_FOLDER = "onnx"
RESULTS_PAGE = "results.html"
EXPORTS_FOLDER = "exports"

# An embeddings set's files beside its vectors
IMAGES_FILE = "images.parquet"  # id and path of every image, to show results
# An index set's files (index/build.py)
INDEX_FILE = "knn.index"
INFOS_FILE = "infos.json"
ITEMS_FILE = "items.arrow"
VECTORS_FILE = "vectors.npy"
SOURCE_FILE = "source.json"
KEYWORDS_FOLDER = "keywords"  # the keyword index over the rows' prompts (index/keyword_index.py)


def images_folder(out_dir: str, img_dir: str = "") -> str:
    """The images step 3 embeds and the server shows: IMG_DIR, or else step 2's downloads."""
    return img_dir or os.path.join(out_dir, IMAGES_FOLDER)


def embeddings_set(out_dir: str, side: str) -> str:
    """The embeddings set of a side, "visual" (images) or "textual" (prompts)."""
    return os.path.join(out_dir, f"{side}_embeddings")


def indices_folder(out_dir: str) -> str:
    return os.path.join(out_dir, INDICES_FOLDER)


def index_set(out_dir: str, side: str) -> str:
    """The index set step 4 builds over embeddings_set(out_dir, side)."""
    return os.path.join(indices_folder(out_dir), side)


def onnx_folder(out_dir: str) -> str:
    """The ONNX export of step 5 and the server: on this machine, whatever OUT_DIR is."""
    return os.path.join(local_dir(out_dir), ONNX_FOLDER)


def results_page(out_dir: str) -> str:
    return os.path.join(local_dir(out_dir), RESULTS_PAGE)


def exports_folder(out_dir: str) -> str:
    return os.path.join(local_dir(out_dir), EXPORTS_FOLDER)
