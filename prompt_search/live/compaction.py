"""Folding the live index's delta into new published sets: the batch steps' own code, each reusing what it can
(step 1 the rows of unchanged files, step 3 and 3' the vectors of known contents and texts, the delta's among
them), run in the background while the server answers from the sets before.

serve.py --WATCH holds the claims of every set it may write (claims.py) for as long as it runs: a batch step or a
second watching server on the same OUT_DIR is refused in one line, never interleaved. A server killed mid-fold
leaves the sets published before it, complete; the next one resumes step 3's unfinished set and catches up.
"""

import os
from collections.abc import Mapping
from contextlib import ExitStack

import numpy as np

from prompt_search.embedding.textual import embed_prompts
from prompt_search.embedding.visual import embed_images
from prompt_search.index.build import create_index
from prompt_search.layout import METADATA_FILE, METADATA_SET, embeddings_set, index_set
from prompt_search.output_sets import claim_set
from prompt_search.settings import EmbedSettings, IndexSettings, WatchSettings
from prompt_search.sources.folder_metadata import extract_folder_metadata

SIDES = ("visual", "textual")


def written_sets(out_dir: str) -> list[str]:
    """Every output set a fold writes."""
    return [os.path.join(out_dir, METADATA_SET), *(embeddings_set(out_dir, side) for side in SIDES),
            *(index_set(out_dir, side) for side in SIDES)]


def hold_claims(out_dir: str) -> ExitStack:
    """The claims of every set a fold writes, held until the returned stack closes (the server's whole run)."""
    stack = ExitStack()
    try:
        for path in written_sets(out_dir):
            stack.enter_context(claim_set(path))
    except BaseException:
        stack.close()
        raise
    return stack


def fold(watch: WatchSettings, embed: EmbedSettings, index: IndexSettings,
         known_images: Mapping[str, np.ndarray] | None = None,
         known_prompts: Mapping[str, np.ndarray] | None = None) -> None:
    """New published sets of the whole folder (steps 1, 3, 4, 3', 4'), vectors reused by content hash and text."""
    out_dir = watch.out_dir
    extract_folder_metadata(watch.img_dir, out_dir, watch.preferred_metadata)
    embed_images(watch.img_dir, embeddings_set(out_dir, "visual"), embed, known=known_images)
    create_index(out_dir, "visual", index, embed)
    embedded, _ = embed_prompts(os.path.join(out_dir, METADATA_FILE), embeddings_set(out_dir, "textual"), embed,
                                by_text=True, known=known_prompts)
    if embedded:
        create_index(out_dir, "textual", index)
