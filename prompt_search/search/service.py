"""What the search server answers, apart from HTTP: the index sets, their item tables' filter columns and the
ONNX sessions, opened once; a request then costs one encoder run, one index search and k row reads."""

import functools
import io
import os
import re
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import IO, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from prompt_search import storage
from prompt_search.errors import UserError
from prompt_search.item_ids import IdPositions
from prompt_search.layout import images_folder, onnx_folder
from prompt_search.pixels import UNREADABLE, open_rgb
from prompt_search.search.core import Hit, SearchIndex, describe, open_sides
from prompt_search.search.encoder import QueryEncoder, ensure_export, open_encoder
from prompt_search.search.filters import FILTER_COLUMNS, Bound, FilterColumn
from prompt_search.search.hybrid import Wanted, ranked
from prompt_search.settings import QuerySettings
from prompt_search.sources.image_files import path_from_text

MAX_TEXT_CHARS = 2000  # CLIP reads 77 tokens, a few hundred characters: longer text is cut before the tokenizer
THUMBNAIL_PIXELS = 320  # longer side of a served thumbnail
NEGATIVE = re.compile(r"(?:^|\s)-(?=\S)")  # "castle -people": a word starting with '-' begins a negative phrase
T = TypeVar("T")
POSITION = re.compile(r"[0-9]{1,15}")  # a thumbnail's position: ASCII digits only, and few enough to be a row


class BadInput(UserError):
    """A request the client must change: answered with this HTTP status and the message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DecodeLimits:
    """What decoding an image may cost: at most max_pixels declared by its header, and images decoded only on the
    pool's `slots` threads, so decoding memory stays under slots x max_pixels x 4 bytes whatever the clients send.
    Threads of their own, not a lock: each thread keeps the heap it decoded in, so only `slots` threads ever may."""
    max_pixels: int
    pool: ThreadPoolExecutor

    @classmethod
    def of(cls, max_pixels: int, slots: int) -> "DecodeLimits":
        return cls(max_pixels, ThreadPoolExecutor(slots, thread_name_prefix="decode"))

    def run(self, decode: Callable[..., T], *args: object) -> T:
        return self.pool.submit(decode, *args).result()


@dataclass
class Answer:
    hits: list[Hit]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds: encode, search, lookup
    view: dict[str, "OpenSide"] | None = None  # the sides searched: the hits' positions are rows of these


def split_negatives(text: str) -> tuple[str, list[str]]:
    """("castle", ["people", "big crowd"]) from "castle -people -big crowd"; "sci-fi" stays one word."""
    positive, *negatives = NEGATIVE.split(text)
    return positive.strip(), [phrase.strip() for phrase in negatives if phrase.strip()]


@dataclass(frozen=True)
class OpenSide:
    """One side as queries see it: its index set (or serve.py --WATCH's live index over it: live_view.py), the
    columns its results filter on, and its positions by id."""
    searched: SearchIndex
    columns: dict[str, FilterColumn]
    ids: IdPositions

    @classmethod
    def of(cls, searched: SearchIndex) -> "OpenSide":
        names = searched.items.reader.schema.names
        columns = {name: FilterColumn.of(searched.items.column(column))
                   for name, column in FILTER_COLUMNS.items() if column in names}
        return cls(searched, columns, IdPositions(searched.items))


class Searcher:
    """The published index sets of out_dir, checked against the model, with its ONNX sessions.

    The sides are one mapping, replaced whole (`replace`) when a live index changes: each request reads it once, so
    it never mixes the positions of one state with the rows of another.
    """

    def __init__(self, sides: dict[str, SearchIndex], model: str, encoder: QueryEncoder, images_dir: str,
                 decoding: DecodeLimits):
        # core.open_sides: opened first, so a wrong OUT_DIR is said before anything is written
        self.view: dict[str, OpenSide] = {side: OpenSide.of(searched) for side, searched in sides.items()}
        self.decoding = decoding
        self.model = model
        self.encoder = encoder
        self.live = False  # serve.py --WATCH: a result whose file is gone (the watcher has yet to see it) is dropped
        local = storage.local_path(images_dir)  # a file:// URL is a local folder: its links are resolved too
        self.images_dir = images_dir.rstrip("/") if local is None else os.path.realpath(local)
        self.images_at_url = local is None

    def replace(self, view: dict[str, OpenSide]) -> None:
        """Answer from view from now on (one assignment: a request already running keeps the view it read)."""
        self.view = view

    def side(self, name: str, view: dict[str, OpenSide] | None = None) -> SearchIndex:
        return self.open_side(name, view).searched

    def open_side(self, name: str, view: dict[str, OpenSide] | None = None) -> OpenSide:
        view = self.view if view is None else view
        if name not in view:
            raise BadInput(f"no {name!r} index here; the indices are {', '.join(view)}")
        return view[name]

    def encode_text(self, text: str, notes: list[str]) -> np.ndarray:
        if not text.strip():
            raise BadInput("the text is empty")
        if len(text) > MAX_TEXT_CHARS:
            notes.append(f"the text was cut to its first {MAX_TEXT_CHARS} of {len(text)} characters")
            text = text[:MAX_TEXT_CHARS]
        vector, note = self.encoder.text(text)
        if note:
            notes.append(f"the text is {note}")
        return vector

    def encode_image(self, data: bytes) -> np.ndarray:
        pixels = declared_pixels(io.BytesIO(data))
        if pixels > self.decoding.max_pixels:
            raise BadInput(f"the image is too large: it has {pixels:,} pixels, a query image may have at most "
                           f"{self.decoding.max_pixels:,}")
        try:
            pixels = self.decoding.run(self._pixels, data)
        except UNREADABLE as error:
            raise BadInput(f"the image cannot be read: {error}") from None
        return self.encoder.image(pixels)

    def _pixels(self, data: bytes) -> np.ndarray:
        """The model's input from an image file's bytes: the full-size image lives only in here."""
        return self.encoder.pixels(open_rgb(io.BytesIO(data), draft_size=self.encoder.pixel_spec.size))

    def stored_vector(self, side: str, position: int) -> np.ndarray:
        """The vector of a result ("more like this"), from the stored vectors: no encoder run."""
        searched = self.side(side)
        if not 0 <= position < len(searched.vectors) or searched.index.ntotal == 0:
            raise BadInput(f"no position {position} in the {side} index")
        vector = np.asarray(searched.vectors[position], dtype=np.float32)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def picture(self, side: str, hit: Hit, view: dict[str, OpenSide] | None = None) -> int | None:
        """The images index's position of the hit's local image: its own, or for a prompt, the image of its id (in
        view, the sides the hit was found in; the current ones by default)."""
        if side == "images":
            return hit.position if hit.path else None
        images = (self.view if view is None else view).get("images")
        return images.ids.position(hit.id) if images else None

    def by_ids(self, ids: list[str]) -> list[tuple[str, Hit]]:
        """(side, hit) of each id found, the images index's row first, described; O(k log n) for k ids."""
        found, view = [], self.view
        for item_id in ids:
            side, position = next(((side, at) for side, opened in view.items()
                                   if (at := opened.ids.position(item_id)) is not None), ("", None))
            if position is not None:
                found.append((side, describe(view[side].searched, [Hit(0, 0.0, item_id, position=position)])[0]))
        return found

    def search(self, side: str, vector: np.ndarray | None, wanted: Wanted, filters: dict[str, tuple[Bound, Bound]],
               answer: Answer, sort: str = "relevance", group: str = "none") -> Answer:
        """The hits wanted of the query in side (hybrid.ranked), only rows whose filter columns lie in the (low, high)
        ranges, ordered by relevance or by the column sort names (SORT_KEYS), one per prompt with group "prompt".
        vector: the query's CLIP vector (None in the keyword mode)."""
        answer.view = self.view  # read once: a live index's fold replaces it whole meanwhile
        opened = self.open_side(side, answer.view)
        searched = opened.searched
        if vector is not None and len(vector) != searched.index.d:
            raise BadInput(f"the query vector has {len(vector)} dimensions, the {side} index {searched.index.d}")
        keep = self._keep(side, opened.columns, filters) if filters else None
        if sort != "relevance":
            if sort not in opened.columns:
                raise BadInput(f"the {side} index has no {sort} to sort by (step 4 computes adherence and aesthetic "
                               "for images: rebuild it)", 422)
            wanted = replace(wanted, sort_by=opened.columns[sort].sort_values)
        if group == "prompt":
            if "prompt_group" not in opened.columns:
                raise BadInput(f"the {side} index has no prompt groups (step 4 computes them for images with prompts: "
                               "rebuild it)", 422)
            wanted = replace(wanted, group_by=opened.columns["prompt_group"].groups)
        start = time.perf_counter()
        try:
            hits = ranked(searched, vector, wanted, keep)
        except UserError as error:  # a set without a keyword index: the client asks again in the semantic mode
            raise BadInput(str(error), 409) from None
        middle = time.perf_counter()
        describe(searched, hits)
        answer.hits = [hit for hit in hits if self._still_there(hit)] if self.live else hits
        answer.timings |= {"search": (middle - start) * 1e3, "lookup": (time.perf_counter() - middle) * 1e3}
        return answer

    def _still_there(self, hit: Hit) -> bool:
        local = storage.local_path(path_from_text(hit.path)) if hit.path else None
        return local is None or os.path.exists(local)

    @staticmethod
    def _keep(side: str, columns: dict[str, FilterColumn], filters: dict[str, tuple[Bound, Bound]]):
        missing = [name for name in filters if name not in columns]
        if missing:
            raise BadInput(f"the {side} index has no {', '.join(missing)} to filter on")

        def keep(positions: np.ndarray) -> np.ndarray:
            mask = np.ones(len(positions), dtype=bool)
            for name, (low, high) in filters.items():
                mask &= columns[name].within(positions, low, high)
            return mask

        return keep

    def thumbnail(self, side: str, position: str) -> bytes | None:
        """A JPEG thumbnail of the result's local image (image_file), or None."""
        path = self.image_file(side, int(position)) if POSITION.fullmatch(position) else None
        return None if path is None else _thumbnail(path, storage.stamp(path), self.decoding)

    def image_file(self, side: str, position: int, view: dict[str, OpenSide] | None = None) -> str | None:
        """The local image of a row of side's item table (in view; the current one by default), or None: only a file
        inside the images folder, whatever the request or the item table's path says (the path is resolved, links
        included, before it is compared)."""
        opened = (self.view if view is None else view).get(side)
        searched = opened and opened.searched
        if searched is None or not 0 <= position < len(searched.items):
            return None
        path = path_from_text(searched.items.rows([position])[0].get("path") or "")  # as path_as_text wrote it
        if self.images_at_url:  # object stores have no links: a path inside starts with the folder, never goes up
            inside = path.startswith(self.images_dir + "/") and ".." not in path.split("/")
            return path if inside and storage.is_file(path) else None
        local = storage.local_path(path) if path else None
        real = os.path.realpath(local) if local else ""
        return real if real.startswith(self.images_dir + os.sep) and os.path.isfile(real) else None


def open_searcher(out_dir: str, img_dir: str, settings: QuerySettings, decoding: DecodeLimits) -> Searcher:
    """A Searcher over out_dir's published indices, the ONNX export made first where it is missing (as step 5's)."""
    sides = open_sides(out_dir, settings.model)  # first: a wrong OUT_DIR is said before anything is written
    onnx_dir = onnx_folder(out_dir)
    ensure_export(onnx_dir, settings)
    return Searcher(sides, settings.model, open_encoder(onnx_dir, settings), images_folder(out_dir, img_dir), decoding)


def declared_pixels(source: IO[bytes]) -> int:
    """The pixels an image's header declares, read before anything is decoded; BadInput when it is no image.

    PIL's own bomb check runs in Image.open: over twice its limit it raises, the size unsaid; over its limit it only
    warns. Both mean an image larger than any bound here, so both are answered as one.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInput(f"the image is too large: it has over {Image.MAX_IMAGE_PIXELS:,} pixels") from None
    except UnidentifiedImageError:  # PIL's message names the BytesIO object, an address meaning nothing to a client
        raise BadInput("the image cannot be read: it is not in an image format this server reads") from None
    except UNREADABLE as error:
        raise BadInput(f"the image cannot be read: {error}") from None
    return width * height


@functools.lru_cache(maxsize=1024)  # a page shows the same results again and again while the query is typed
def _thumbnail(path: str, stamp: str, decoding: DecodeLimits) -> bytes | None:
    """None for a file that is no image or larger than decoding allows: it has no thumbnail."""
    try:
        with storage.open_file(path) as header:  # local or at a URL: only the header is read here
            if declared_pixels(header) > decoding.max_pixels:
                return None
        return decoding.run(_jpeg_thumbnail, path)
    except (*UNREADABLE, BadInput):
        return None


def _jpeg_thumbnail(path: str) -> bytes:
    image = open_rgb(path, draft_size=THUMBNAIL_PIXELS)
    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()
