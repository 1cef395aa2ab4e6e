"""Which files of the watched folder changed: the file system's events through watchfiles (Rust's notify: inotify,
FSEvents, ReadDirectoryChanges), or polling where the file system sends none (benchmarks/RESULTS.md, issue 29, has
the measurements that chose watchfiles), and when a changed file is complete enough to read.

A file is read once it is complete: A1111 and Forge write a temporary name and rename it (the new name appears
whole), ComfyUI writes in place, a copy or a phone's sync grows a file for a while. So a changed path waits until
its size and modification time stayed the same for SETTLE_S; a file still growing waits on.
"""

import os
import threading
import time
from collections.abc import Callable

import watchfiles

DEBOUNCE_MS = 50  # watchfiles gathers the events of this long into one batch (its default, 1.6 s, would eat the 2 s)
STEP_MS = 20  # how often watchfiles looks whether the batch is complete
SETTLE_S = 0.25  # a changed file is read once its size and modification time stayed the same this long
NETWORK_POLL_S = 2.0  # seconds between two looks at a folder on a network mount, which sends no events
# File systems that send no inotify events for changes made elsewhere (another machine, a phone's sync)
NO_EVENTS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "fuse.rclone", "davfs", "fuse.s3fs",
             "fuse.gcsfuse", "afs", "ceph", "glusterfs", "fuse.glusterfs", "lustre"}


def mount_type(folder: str) -> str:
    """The file system type of the mount holding folder (/proc/mounts: Linux), or "" when unknown."""
    real, best, found = os.path.realpath(folder), "", ""
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as mounts:
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


def poll_interval(folder: str, poll_s: float) -> float:
    """Seconds between polls of folder, or 0 to use its events (WATCH_POLL_S: README, Your own generations)."""
    if poll_s > 0:
        return poll_s
    return NETWORK_POLL_S if mount_type(folder) in NO_EVENTS else 0.0


class Arrivals:
    """A thread that hands on_paths the set of paths below folder that changed, a batch at a time."""

    def __init__(self, folder: str, poll_s: float, on_paths: Callable[[set[str]], None]):
        self.folder, self.on_paths = folder, on_paths
        self.poll_s = poll_interval(folder, poll_s)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="watch-events", daemon=True)

    @property
    def mode(self) -> str:
        return f"polling every {self.poll_s:g} s" if self.poll_s else "events"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        changes = watchfiles.watch(self.folder, watch_filter=None, debounce=DEBOUNCE_MS, step=STEP_MS,
                                   stop_event=self.stopping, raise_interrupt=False, rust_timeout=1000,
                                   yield_on_timeout=False, force_polling=bool(self.poll_s),
                                   poll_delay_ms=int(self.poll_s * 1000), ignore_permission_denied=True)
        for batch in changes:
            self.on_paths({path for _, path in batch})


class Settling:
    """Changed paths waiting to be complete: each is ready once its (size, mtime) held still for SETTLE_S."""

    def __init__(self):
        self.waiting: dict[str, tuple[tuple[int, int] | None, float]] = {}  # path -> (last seen, since when)
        self.lock = threading.Lock()

    def add(self, paths: set[str]) -> None:
        now = time.monotonic()
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
