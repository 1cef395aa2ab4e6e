"""Which files of the watched folder changed: the file system's events through watchdog (inotify on Linux,
FSEvents, ReadDirectoryChanges), or polling where the file system sends none, and when a changed file is complete
enough to read. benchmarks/RESULTS.md (issue 29) has the measurements that chose watchdog over watchfiles: on a
burst of files into a folder made a moment before, watchfiles missed 18 of 30 and watchdog none; watchdog says when
a file written is closed, and a rename's new name.

A file is read once it is complete: A1111 and Forge write a temporary name and rename it (the new name appears
whole), ComfyUI writes in place and closes, a copy or a phone's sync grows a file for a while. A file closed after
writing or renamed into place is ready at once; any other change waits until the file's size and modification
time held still for SETTLE_S (where no close is reported: polling, other systems), and a file still growing waits
on.
"""

import os
import threading
import time
from collections.abc import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

SETTLE_S = 0.25  # a changed file is read once its size and modification time stayed the same this long
NETWORK_POLL_S = 2.0  # seconds between two looks at a folder on a network mount, which sends no events
# File systems that send no inotify events for changes made elsewhere (another machine, a phone's sync)
NO_EVENTS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "fuse.rclone", "davfs", "fuse.s3fs",
             "fuse.gcsfuse", "afs", "ceph", "glusterfs", "fuse.glusterfs", "lustre"}


def mount_type(folder: str, mounts_file: str = "/proc/mounts") -> str:
    """The file system type of the mount holding folder (/proc/mounts: Linux), or "" when unknown."""
    real, best, found = os.path.realpath(folder), "", ""
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) < 3:
                    continue
                point = parts[1].replace("\\040", " ")
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, found = point, parts[2]
    except OSError:
        return ""
    return found


def poll_interval(folder: str, poll_s: float, mounts_file: str = "/proc/mounts") -> float:
    """Seconds between polls of folder, or 0 to use its events (WATCH_POLL_S: README, Your own generations)."""
    if poll_s > 0:
        return poll_s
    return NETWORK_POLL_S if mount_type(folder, mounts_file) in NO_EVENTS else 0.0


class Arrivals(FileSystemEventHandler):
    """Hands on_paths the paths below folder that changed, complete or not (on_paths(paths, complete)), and
    on_lost() when the events of a change may have been lost (a folder moved in or out, an overflow)."""

    def __init__(self, folder: str, poll_s: float, on_paths: Callable[[set[str], bool], None],
                 on_lost: Callable[[], None]):
        self.folder, self.on_paths, self.on_lost = folder, on_paths, on_lost
        self.poll_s = poll_interval(folder, poll_s)
        self.observer = PollingObserver(timeout=self.poll_s) if self.poll_s else Observer()

    @property
    def mode(self) -> str:
        return f"polling every {self.poll_s:g} s" if self.poll_s else "events"

    def start(self) -> None:
        self.observer.schedule(self, self.folder, recursive=True)
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._event(event)
        except Exception as error:  # noqa: BLE001 (an exception here would end watchdog's thread: look again instead)
            print(f"watch: {type(error).__name__}: {error}; looking at the whole folder", flush=True)
            self.on_lost()

    def _event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            if event.event_type in ("created", "deleted", "moved"):  # its files come or go with it
                self.on_lost()
            return
        if event.event_type == "moved":  # the old name is gone, the new one whole (A1111's rename)
            self.on_paths({os.fsdecode(event.src_path)}, False)
            self.on_paths({os.fsdecode(event.dest_path)}, True)
        elif event.event_type in ("created", "modified", "deleted"):
            self.on_paths({os.fsdecode(event.src_path)}, False)
        elif event.event_type == "closed":  # closed after writing: complete
            self.on_paths({os.fsdecode(event.src_path)}, True)

    def on_events_lost(self, event: FileSystemEvent) -> None:
        self.on_lost()


class Settling:
    """Changed paths waiting to be complete: each is ready once its (size, mtime) held still for SETTLE_S."""

    def __init__(self):
        self.waiting: dict[str, tuple[tuple[int, int] | None, float]] = {}  # path -> (last seen, since when)
        self.lock = threading.Lock()

    def add(self, paths: set[str], complete: bool = False) -> None:
        """Wait for paths; complete: they need no settling (closed after writing, renamed into place)."""
        now = time.monotonic() - (SETTLE_S if complete else 0.0)
        with self.lock:
            for path in paths:
                self.waiting[path] = (_seen(path), now)

    def __len__(self) -> int:
        return len(self.waiting)

    def ready(self, limit: int) -> list[str]:
        """Up to limit paths that held still for SETTLE_S (or are gone: a deletion needs no waiting)."""
        now, done = time.monotonic(), []
        with self.lock:
            for path, (before, since) in list(self.waiting.items()):
                seen = _seen(path)
                if seen != before:
                    self.waiting[path] = (seen, now)
                elif seen is None or now - since >= SETTLE_S:
                    done.append(path)
                    del self.waiting[path]
                    if len(done) == limit:
                        break
        return done

    def next_due(self) -> float:
        """Seconds until the earliest waiting path may be ready (0 when one is, SETTLE_S when none waits)."""
        with self.lock:
            since = min((since for _, since in self.waiting.values()), default=None)
        return SETTLE_S if since is None else max(0.0, since + SETTLE_S - time.monotonic())


def _seen(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns
