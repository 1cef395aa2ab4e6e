"""The files of an embeddings set (step 3's layout: embeddings/NNNNNNNNN.npy beside ids/NNNNNNNNN.npy) in the order
autofaiss reads them, each with its first position in an index built from them."""

import os
from dataclasses import dataclass

import numpy as np

from prompt_search.errors import UserError


@dataclass
class SourceFile:
    vectors: str  # embeddings/NNNNNNNNN.npy
    ids: str  # ids/NNNNNNNNN.npy
    start: int  # index position of its first vector
    count: int


def source_files(folder: str) -> list[SourceFile]:
    """The embeddings files of an embeddings set in the order autofaiss reads them, with their ids files."""
    from embedding_reader.get_file_list import get_file_list

    _, paths = get_file_list(os.path.join(folder, "embeddings"), "npy")
    files, start = [], 0
    for path in paths:
        ids_path = os.path.join(folder, "ids", os.path.basename(path))
        if not os.path.isfile(ids_path):
            raise UserError(f"{ids_path} is missing: rerun the embeddings step to complete {folder}")
        count = np.load(path, mmap_mode="r").shape[0]
        id_count = np.load(ids_path, mmap_mode="r").shape[0]
        if count != id_count:
            raise UserError(f"{path} holds {count} vectors but {ids_path} {id_count} ids")
        if count:  # autofaiss skips empty files
            files.append(SourceFile(path, ids_path, start, count))
            start += count
    return files
