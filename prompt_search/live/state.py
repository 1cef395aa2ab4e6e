"""What serve.py --WATCH knows of the folder: every image's stamp, metadata row and rows in both indices, the
published sets it started from, and the deltas added since (search/live_view.py searches them).

Both sides end as a batch build over the folder would make them (steps 1, 3, 3', 4 and 4'):
  images   one row per readable image: id, path and step 1's row; a changed file's old row is hidden and its new
           one added, a deleted file's hidden.
  prompts  one row per distinct prompt (embedding/listing.py's key: case and white space ignored), under the id of
           the first image in the folder's listing order that has it (image_files.list_images: sorted names, a
           folder's files before its subfolders): when that image changes or goes, the prompt moves to the next.
Changes arrive as whole batches (apply): the images side takes them in at once; the prompts they move wait
(`waiting`) until move_prompts takes them in, so that a burst of new images is searchable before its prompts are
encoded (a prompt costs the CPU as much as its image). Each call ends in one new view of both sides, handed to the
Searcher at once.
"""

import bisect
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from prompt_search.embedding.listing import prompt_keys
from prompt_search.errors import UserError
from prompt_search.index.scores import group_numbers
from prompt_search.search.live_view import Delta, merged_side
from prompt_search.search.service import OpenSide
from prompt_search.sources.image_files import path_from_text

PromptEncoder = Callable[[list[str]], np.ndarray]


def prompt_key(prompt: str | None) -> str:
    """The listing's key of a prompt ("" for none): embedding/listing.py's rule, for one prompt."""
    return " ".join((prompt or "").split()).casefold()


def listing_order(item_id: str) -> tuple:
    """Where a path id comes in list_images' walk: by folder, a folder's own files before its subfolders."""
    *folders, name = item_id.split("/")
    return (*((1, folder) for folder in folders), (0, name))


@dataclass
class FileState:
    """One image as the live index holds it."""
    stamp: str  # folder_metadata.file_stamp: a change of the image or its .txt changes it
    row: dict  # step 1's row (folder_metadata.SCHEMA), id included
    path: str = ""  # as step 3 lists it (path_as_text); "" for a published row (its item table has it)
    image: int | None = None  # its row in the images side; None: not embedded (step 3 skips an unreadable file)
    content: str = ""  # step 3's content hash, "" when not known here (a published row)


@dataclass
class SideDelta:
    """A side's delta as it grows: rows added, positions hidden."""
    published: int
    vectors: list[np.ndarray] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    hidden: set[int] = field(default_factory=set)

    def add(self, row: dict, vector: np.ndarray) -> int:
        self.rows.append(row)
        self.vectors.append(vector)
        return self.published + len(self.rows) - 1

    def frozen(self, dimension: int) -> Delta:
        hidden = np.zeros(self.published + len(self.rows), bool)
        hidden[list(self.hidden)] = True
        vectors = np.stack(self.vectors) if self.vectors else np.zeros((0, dimension), np.float32)
        return Delta(vectors.astype(np.float32), tuple(self.rows), hidden)


class LiveState:
    """The folder as indexed: the published sides, each image's state, and the deltas since."""

    def __init__(self, published: dict[str, OpenSide], out_dir: str, encode_prompts: PromptEncoder):
        if "images" not in published:
            raise UserError(f"{out_dir} has no images index: build it first (make own IMG_DIR=...)")
        self.published, self.encode_prompts = published, encode_prompts
        self.files: dict[str, FileState] = {}
        self.holders: dict[str, list[tuple[tuple, str]]] = {}  # prompt key -> (listing order, id), in order
        self.prompt_rows: dict[str, tuple[str, int]] = {}  # prompt key -> (id, position) of its row in prompts
        self.deltas = {side: SideDelta(opened.searched.index.ntotal) for side, opened in published.items()}
        self.waiting: set[str] = set()  # prompt keys whose row may have to move, for move_prompts
        self.touched: set[str] = set()  # ids changed since the prompts last caught up: their rows are read anew
        self.dimension = published["images"].searched.index.d
        self._read_published(out_dir)

    def _read_published(self, out_dir: str) -> None:
        """Each image's state as the published images index holds it: the row and stamp step 4 joined into its
        item table. The index, not the metadata set, is the record: a fold killed after step 1 published leaves a
        metadata set ahead of the index, and its images are ingested again. An image the index lacks (unreadable
        then) is read again too. Prompt rows out of step with their images (a fold killed between steps 4 and 4')
        are moved as changes are."""
        items = self.published["images"].searched.items
        if "stamp" not in items.reader.schema.names:
            raise UserError(f"{out_dir}'s images index was not built from a folder read by step 1 for a folder (or "
                            "by a version before its stamps were kept): --WATCH keeps the index of a folder (make own "
                            "IMG_DIR=...) in step with it; run make own once")
        for position, row in enumerate(items.reader.read_all().to_pylist()):
            stamp, path = row.pop("stamp"), row.pop("path")
            if not path_from_text(path).replace(os.sep, "/").endswith("/" + path_from_text(row["id"])):
                raise UserError(f"{path} has the id {row['id']!r} from its sidecar: --WATCH keeps a folder whose ids "
                                "are the images' paths below it (step 3's ids without sidecars)")
            if stamp is None:  # an image step 1 did not list (added between steps 1 and 3): hidden, read again
                self.deltas["images"].hidden.add(position)
                continue
            self.files[row["id"]] = FileState(stamp, row, path, image=position)
            self._hold(row["id"], prompt_key(row.get("prompt")))
        prompts = self.published.get("prompts")
        if prompts is None:
            return
        column = prompts.searched.items.column("prompt").combine_chunks()
        ids = prompts.searched.items.column("id").to_pylist()
        for position, (item_id, key) in enumerate(zip(ids, prompt_keys(column).to_pylist(), strict=True)):
            if key:
                self.prompt_rows[key] = (item_id, position)
        self.waiting = {key for key in self.holders.keys() | self.prompt_rows.keys()
                        if self.prompt_rows.get(key, ("",))[0] != self.holders.get(key, [((), None)])[0][1]}

    def _hold(self, item_id: str, key: str) -> None:
        if key:
            bisect.insort(self.holders.setdefault(key, []), (listing_order(item_id), item_id))

    def _let_go(self, item_id: str, key: str) -> None:
        holders = self.holders.get(key, [])
        at = bisect.bisect_left(holders, (listing_order(item_id), item_id))
        if at < len(holders) and holders[at][1] == item_id:
            del holders[at]
        if not holders:
            self.holders.pop(key, None)

    def stamps(self) -> dict[str, str]:
        """Each indexed image's stamp, by id."""
        return {item_id: state.stamp for item_id, state in self.files.items()}

    def delta_size(self) -> int:
        """Rows added and rows hidden since the published sets: what a fold would make new (a hidden row costs every
        query one more candidate)."""
        return sum(len(delta.rows) + len(delta.hidden) for delta in self.deltas.values())

    def apply(self, changed: dict[str, FileState | None], vectors: dict[str, np.ndarray]) -> dict[str, OpenSide]:
        """Take in a batch of changes (id -> its new state, None: deleted; vectors: the new images' by id) on the
        images side, the prompts they move left waiting; return the view after it."""
        images = self.deltas["images"]
        for item_id, new in changed.items():
            old = self.files.pop(item_id, None)
            if old is not None:
                if old.image is not None:
                    images.hidden.add(old.image)
                self.waiting.add(prompt_key(old.row.get("prompt")))
                self._let_go(item_id, prompt_key(old.row.get("prompt")))
            if new is None:
                continue
            if item_id in vectors:
                key = prompt_key(new.row.get("prompt"))
                group = group_numbers(pa.array([key or None], pa.string()))[0].as_py()  # step 4's, for one row
                new.image = images.add({**new.row, "path": new.path, "prompt_group": group}, vectors[item_id])
            self.files[item_id] = new
            self.waiting.add(prompt_key(new.row.get("prompt")))
            self._hold(item_id, prompt_key(new.row.get("prompt")))
        self.waiting.discard("")
        self.touched.update(changed)
        if "prompts" not in self.deltas:
            self.waiting.clear()
        return self.view()

    def move_prompts(self, limit: int) -> dict[str, OpenSide]:
        """Take in up to limit waiting prompt keys: each key's row under its first holder now, hidden where its
        holder changed, added anew (its prompt encoded first: an encoder that fails leaves the state as it was).
        Return the view after it."""
        prompts = self.deltas["prompts"]
        keys = sorted(self.waiting)[:limit]
        moves = []  # (key, position to hide or None, first holder to add or None)
        for key in keys:
            first = self.holders[key][0][1] if key in self.holders else None
            current = self.prompt_rows.get(key)
            stale = current is not None and (current[0] != first or current[0] in self.touched)
            moves.append((key, current[1] if stale else None, first if current is None or stale else None))
        adding = [(key, first) for key, _, first in moves if first is not None]
        vectors = self.encode_prompts([self.files[first].row["prompt"] for _, first in adding])
        for key, hidden, _ in moves:
            if hidden is not None:
                prompts.hidden.add(hidden)
                del self.prompt_rows[key]
        for (key, first), vector in zip(adding, vectors, strict=True):
            self.prompt_rows[key] = (first, prompts.add(dict(self.files[first].row), vector))
        for key in keys:
            self._score_images_of(key)
        self.waiting.difference_update(keys)
        if not self.waiting:
            self.touched.clear()
        return self.view()

    def _score_images_of(self, key: str) -> None:
        """The adherence of the new images of a prompt (step 4's score: the cosine of the image's vector and its
        prompt's), now that its prompt has a vector: searchable by it before the next fold."""
        vector = self._prompt_vector(key)
        images = self.deltas["images"]
        for _, item_id in self.holders.get(key, []) if vector is not None else []:
            at = self.files[item_id].image
            if at is not None and at >= images.published:
                row = images.rows[at - images.published]  # replaced, not changed: a frozen view keeps its own
                images.rows[at - images.published] = {**row, "adherence": float(images.vectors[at - images.published]
                                                                                 @ vector)}

    def _prompt_vector(self, key: str) -> np.ndarray | None:
        """The unit vector of the prompt row of key, published or added since; None when it has none yet."""
        found = self.prompt_rows.get(key)
        if found is None:
            return None
        prompts = self.deltas["prompts"]
        if found[1] >= prompts.published:
            vector = prompts.vectors[found[1] - prompts.published]
        else:
            vector = self.published["prompts"].searched.vectors[found[1]]
        vector = np.asarray(vector, np.float32)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def view(self) -> dict[str, OpenSide]:
        return {side: merged_side(opened, self.deltas[side].frozen(self.dimension))
                for side, opened in self.published.items()}
