"""serve.py --WATCH: the server's index kept in step with IMG_DIR while it answers.

One thread (the ingest loop) owns the live state: it takes the complete files among the changed ones
(arrivals.py), reads each as steps 1 and 3 read it (its metadata row, content hash and vector), applies the batch to
the state (state.py) and hands the Searcher the new view at once. When the delta reaches WATCH_COMPACT_ITEMS a fold
(compaction.py) writes new published sets in a second thread; the loop then opens them, catches up with what
changed meanwhile, and switches the Searcher to them in one assignment: no request is dropped.

Nothing of the delta is kept on disk: the folder is the record. A server that starts (or restarts after a kill)
compares the folder with the published sets' stamps and ingests the difference, so no image is lost or counted
twice whenever it stopped.
"""

import datetime
import os
import threading
import time
from dataclasses import replace

import numpy as np

from prompt_search.embedding.reuse import content_hash, text_hash
from prompt_search.errors import UserError
from prompt_search.live.arrivals import Arrivals, Settling
from prompt_search.live.compaction import fold
from prompt_search.live.encoders import Encoders
from prompt_search.live.state import FileState, LiveState
from prompt_search.search.core import open_sides
from prompt_search.search.service import OpenSide, Searcher
from prompt_search.settings import EmbedSettings, IndexSettings, WatchSettings
from prompt_search.sources.folder_metadata import file_stamp, image_row, read_with
from prompt_search.sources.image_files import IMAGE_EXTENSIONS, list_images, path_as_text, path_from_text

FOLD_RETRY_S = 60.0  # a fold that failed is tried again this long after


class Watch:
    """The watcher, the ingest loop and the folds of one server."""

    def __init__(self, searcher: Searcher, settings: WatchSettings, embed: EmbedSettings, index: IndexSettings):
        self.searcher, self.settings, self.index = searcher, settings, index
        self.embed = replace(embed, num_workers=0)  # a fold's step 3 loads in this process: no fork of a server
        self.img_dir = os.path.abspath(settings.img_dir)
        indexed = (read_with(settings.out_dir) or {}).get("img_dir")
        if indexed != self.img_dir:
            raise UserError(f"{settings.out_dir} holds the index of {indexed or 'no folder'}, not of {self.img_dir}: "
                            "give that --IMG_DIR, or another --OUT_DIR for this folder")
        self.encoders = Encoders(embed)
        self.image_cache: dict[str, np.ndarray] = {}  # content hash -> vector, of images embedded here
        self.prompt_cache: dict[str, np.ndarray] = {}  # text_hash -> vector, of prompts embedded here
        self.state = LiveState(searcher.view, settings.out_dir, self._prompt_vectors)
        self.settling = Settling()
        self.arrivals = Arrivals(self.img_dir, settings.watch_poll_s, self._changed, self._lost)
        self.wake, self.stopping = threading.Event(), threading.Event()
        self.rescan = True  # the whole folder is compared with the published sets first
        self.ready = False  # that first comparison is done
        self.folding: threading.Thread | None = None
        self.folded = False  # a fold published new sets: the loop switches to them
        self.retry_at = 0.0  # no fold before then (monotonic clock): a failed one is tried again a minute later
        self.generation = 0  # changes applied so far: the page compares it to tell that new results arrived
        self.last: dict = {}
        self.error = ""
        self.loop = threading.Thread(target=self._run, name="watch-ingest", daemon=True)
        searcher.live = True

    def start(self) -> None:
        self.arrivals.start()
        self.loop.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.arrivals.stop()
        self.loop.join(timeout=10)  # a fold under way is left to stop with the process: its set is never published

    def health(self, private: bool = True) -> dict:
        """/health's watch: what the watcher is doing (README: Your own generations). Not private (a client without
        the server's token): the counts only, not the folder, a file's name or an error's words."""
        deltas = self.state.deltas
        counts = {"ready": self.ready, "mode": self.arrivals.mode, "pending": len(self.settling),
                  "prompts_pending": len(self.state.waiting),
                  "delta": {side: len(delta.rows) for side, delta in deltas.items()},
                  "hidden": {side: len(delta.hidden) for side, delta in deltas.items()},
                  "compacting": self.folding is not None, "generation": self.generation}
        return {**counts, "folder": self.img_dir, "last_indexed": self.last, "error": self.error} if private else counts

    def _changed(self, paths: set[str], complete: bool) -> None:
        """The watcher's paths (in its thread: the state is the loop's alone): images and .txt sidecars wait to be
        complete. Folders come and go as arrivals.py's on_lost."""
        waiting = set()
        for path in paths:
            stem, extension = os.path.splitext(path)
            if extension.lower() in IMAGE_EXTENSIONS:
                waiting.add(path)
            elif extension.lower() == ".txt":  # the image beside it has a new stamp: read again
                waiting.update(self._images_named(stem))
        self.settling.add(waiting, complete)
        self.wake.set()

    def _lost(self) -> None:
        self.rescan = True
        self.wake.set()

    @staticmethod
    def _images_named(stem: str) -> list[str]:
        """The images beside a .txt of this stem (a few stats, not a listing of the folder)."""
        return [stem + extension for known in IMAGE_EXTENSIONS for extension in (known, known.upper())
                if os.path.isfile(stem + extension)]

    def _id(self, path: str) -> tuple[str, str]:
        """(id, path as step 3 lists it) of a file below the folder: its path below IMG_DIR, IMG_DIR as given."""
        below = os.path.relpath(path, self.img_dir)
        return path_as_text(below.replace(os.sep, "/")), path_as_text(os.path.join(self.settings.img_dir, below))

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._step()
            except Exception as error:  # noqa: BLE001 (the server goes on; /health says what failed)
                self.error = f"{type(error).__name__}: {error}"
                print(f"watch: {self.error}", flush=True)
                self.rescan = True  # what the failed step had taken from the queue is found again
                self.stopping.wait(1.0)

    def _step(self) -> None:
        if self.rescan:
            self.rescan = False
            self._reconcile()
            self.ready = True
        if self.folded:
            self._switch()
        paths = self.settling.ready(self.settings.batch_size)
        if paths:
            self._publish(self._ingest(paths))
        elif self.state.waiting:  # the images first: their prompts when no image waits
            self._publish(self.state.move_prompts(self.settings.batch_size))
        elif not self.wake.wait(self.settling.next_due() if len(self.settling) else 1.0):
            return
        else:
            self.wake.clear()

    def _reconcile(self) -> None:
        """Compare the folder with the state: deleted images go now, new and changed ones wait to settle."""
        gone, waiting = self._differences()
        if gone:
            self._publish(self.state.apply(dict.fromkeys(gone), {}))
        self.settling.add(waiting)

    def _differences(self) -> tuple[set[str], set[str]]:
        """(ids no longer in the folder, paths new or changed since the state read them)."""
        items, _, _ = list_images(self.img_dir)
        files, waiting = self.state.files, set()
        for item_id, path in items:
            known = files.get(item_id)
            if known is None or known.stamp != file_stamp(path_from_text(path)):
                waiting.add(path_from_text(path))
        return files.keys() - {item_id for item_id, _ in items}, waiting

    def _ingest(self, paths: list[str] | set[str]) -> dict[str, OpenSide]:
        """Read the files at paths as steps 1 and 3 read them, and apply them to the state: the view after."""
        changed: dict[str, FileState | None] = {}
        to_embed: list[tuple[str, str]] = []
        for path in paths:
            item_id, text = self._id(path)
            if not os.path.isfile(path):
                if item_id in self.state.files:
                    changed[item_id] = None
                continue
            stamp = file_stamp(path)
            known = self.state.files.get(item_id)
            if known is not None and known.stamp == stamp:
                continue
            row, _ = image_row(path, self.settings.preferred_metadata)
            changed[item_id] = FileState(stamp, {"id": item_id, **row}, text, content=content_hash(path))
            if changed[item_id].content and changed[item_id].content not in self.image_cache:
                to_embed.append((item_id, text))
        for start in range(0, len(to_embed), self.settings.batch_size):  # a catch-up's thousands, a batch at a time
            vectors, ids, _ = self.encoders.images(to_embed[start:start + self.settings.batch_size])
            for item_id, vector in zip(ids, vectors, strict=True):
                self.image_cache[changed[item_id].content] = vector
        vectors = {item_id: self.image_cache[new.content] for item_id, new in changed.items()
                   if new is not None and new.content in self.image_cache}
        view = self.state.apply(changed, vectors)
        if changed:
            last_path, last = next(reversed(changed.items()))
            self.last = {"id": last_path, "deleted": last is None,
                         "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")}
        return view

    def _publish(self, view: dict[str, OpenSide]) -> None:
        self.searcher.replace(view)
        self.generation += 1
        due = self.state.delta_size() >= self.settings.watch_compact_items and time.monotonic() >= self.retry_at
        if due and self.folding is None and not self.folded:
            self.folding = threading.Thread(target=self._fold, args=(dict(self.image_cache), dict(self.prompt_cache)),
                                            name="watch-fold", daemon=True)
            self.folding.start()

    def _fold(self, known_images: dict, known_prompts: dict) -> None:
        started = time.perf_counter()
        try:
            fold(self.settings, self.embed, self.index, known_images, known_prompts)
            self.folded = True
            print(f"watch: folded the delta into new published sets in {time.perf_counter() - started:.1f} s",
                  flush=True)
        except Exception as error:  # noqa: BLE001 (the delta still answers; a change a minute later tries again)
            self.error = f"fold: {type(error).__name__}: {error}"
            self.retry_at = time.monotonic() + FOLD_RETRY_S
            print(f"watch: {self.error}", flush=True)
        finally:
            self.folding = None
            self.wake.set()

    def _switch(self) -> None:
        """Answer from the sets a fold published, with what changed since it read the folder applied on top. Should
        it fail, the state before stays and the switch is tried again."""
        published = {side: OpenSide.of(searched)
                     for side, searched in open_sides(self.settings.out_dir, self.searcher.model).items()}
        before, self.state = self.state, LiveState(published, self.settings.out_dir, self._prompt_vectors)
        try:
            gone, waiting = self._differences()
            self._ingest(waiting)
            self.state.apply(dict.fromkeys(gone), {})
            view = self.state.move_prompts(len(self.state.waiting))
        except BaseException:
            self.state = before
            raise
        self.folded = False
        self._publish(view)
        contents = {state.content for state in self.state.files.values() if state.content}
        self.image_cache = {digest: vector for digest, vector in self.image_cache.items() if digest in contents}
        prompts = self.state.deltas["prompts"].rows if "prompts" in self.state.deltas else []
        texts = {text_hash(row["prompt"]) for row in prompts}
        self.prompt_cache = {digest: vector for digest, vector in self.prompt_cache.items() if digest in texts}
        self.error = ""

    def _prompt_vectors(self, texts: list[str]) -> np.ndarray:
        """The prompts' vectors, each prompt encoded once while it is in the delta."""
        digests = [text_hash(text) for text in texts]
        missing = sorted({digest: text for digest, text in zip(digests, texts, strict=True)
                          if digest not in self.prompt_cache}.items())
        if missing:
            encoded = self.encoders.prompts([text for _, text in missing])
            self.prompt_cache.update(zip([digest for digest, _ in missing], encoded, strict=True))
        return np.stack([self.prompt_cache[d] for d in digests]) if digests else np.zeros((0, self.encoders.dim))

