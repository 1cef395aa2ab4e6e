"""One writer per output set: a step claims a set before it writes any of it, and a second run that would write the
same set while the first one does is refused in one line, naming the run that holds it.

The claim is the file `.NAME-claim` beside the set (output_sets.py names it):
  - at a local path, an flock on it, held for the whole write: the kernel releases it when the process ends, however
    it ends, so a run that was killed leaves nothing that stops the next one;
  - at a URL, the object itself, created only if it does not exist (create_exclusive: atomic where the
    storage's exclusive create is). It holds its owner and when it expires, and the run renews it while it writes:
    a claim not renewed for LEASE_S seconds was left by a killed run, and the next run takes it over (one run per
    expired claim, by the exclusive create of `.NAME-claim-OWNER`). A run checks that its claim is still its own
    before it publishes.
The clocks of the machines that write one URL are taken to agree to well within LEASE_S.
"""

import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import IO

from prompt_search import storage
from prompt_search.errors import UserError, file_error
from prompt_search.storage import is_url
from prompt_search.storage_errors import StorageError, reaching

LEASE_S = 120.0  # a claim at a URL not renewed for this long is taken to be a killed run's
RENEW_S = LEASE_S / 4  # how often a run renews its claim at a URL (three renewals may fail before it lapses)
_held: dict[str, "Claim"] = {}  # the claims this process holds, by claim file


class Claim:
    """What the run holding a set's claim can ask of it."""

    def check(self) -> None:
        """Refuse to publish unless this run still holds the claim (a local claim cannot be lost)."""

    def forget(self) -> None:
        """In a forked child of the holder: let go of what it inherited, leaving the claim to the holder."""


class _LocalClaim(Claim):
    def __init__(self, lock: IO):
        self.lock = lock

    def forget(self) -> None:
        self.lock.close()  # the child's copy of the descriptor: the lock stays with the holder's


def _forget_in_child() -> None:
    """A forked child (a loader process of step 3) holds none of its parent's claims: were it to keep a copy of a
    lock's descriptor, the lock would outlive a killed parent until the child ends, and refuse the rerun."""
    for claim in _held.values():
        claim.forget()
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _record(owner: str) -> dict:
    return {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"), "expires": time.time() + LEASE_S}


def _holder(text: str) -> str:
    """The run a claim's record names, in words."""
    try:
        held = json.loads(text)
        return f"another run (pid {held['pid']} on {held['host']}, since {held['since']})"
    except (ValueError, TypeError, KeyError):
        return "another run"


def _lapsed(held: dict) -> bool:
    """Whether a claim at a URL was left by a run that is gone: not renewed in time, or its process on this machine
    has ended (a killed run on this machine is taken over at once, without waiting for its lease)."""
    if held.get("expires", 0) < time.time():
        return True
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a process of another user: running
        return False
    return False


def _refused(what: str, holder: str, more: str = "") -> UserError:
    return UserError(f"{what}: {holder} is writing this set; run again when it has ended{more}")


@contextmanager
def claimed(claim_file: str, what: str) -> Iterator[Claim]:
    """Hold the claim on the set what (its path), whose claim file is claim_file, for the block; a block inside one
    that holds it already (a step that claims its set before it reads its inputs) holds that claim."""
    if claim_file in _held:
        yield _held[claim_file]
        return
    with (_url_claim if is_url(claim_file) else _local_claim)(claim_file, what) as claim:
        _held[claim_file] = claim
        try:
            yield claim
        finally:
            del _held[claim_file]


@contextmanager
def _local_claim(claim_file: str, what: str) -> Iterator[Claim]:
    lock = _locked(claim_file, what)
    try:
        lock.truncate(0)  # who holds it, for the message a second run prints
        lock.write(json.dumps(_record("")))
        lock.flush()
        yield _LocalClaim(lock)
    finally:
        with suppress(FileNotFoundError):  # removed before the lock goes: a run that opens it later makes a new file
            os.remove(claim_file)
        lock.close()


def _locked(claim_file: str, what: str) -> IO:
    """The claim file, open and flocked by this process; a UserError naming its holder when another one holds it."""
    while True:
        try:
            os.makedirs(os.path.dirname(claim_file) or ".", exist_ok=True)
            lock = open(claim_file, "a+")  # noqa: SIM115 (held open until the claim is released)
        except OSError as error:
            raise UserError(f"{what}: cannot write beside it ({file_error(error)})") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = _holder(lock.read())
            lock.close()
            raise _refused(what, holder) from None
        try:  # the holder before may have removed the file after this process opened it: lock the file there now
            if os.stat(claim_file).st_ino == os.fstat(lock.fileno()).st_ino:
                return lock
        except FileNotFoundError:
            pass
        lock.close()


class _UrlClaim(Claim):
    """A claim object at a URL, renewed by a thread while it is held."""

    def __init__(self, claim_file: str, what: str):
        self.file, self.what, self.owner = claim_file, what, uuid.uuid4().hex
        self.takeover = ""  # the object this run created to take over an expired claim, removed on release
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, daemon=True)

    def take(self) -> None:
        for _ in range(2):  # a claim may be released between a create that failed and its read
            if create_exclusive(self.file, self._content()):
                break
            held = self._read()
            if held is not None:
                self._take_over(held)
                break
        else:
            raise _refused(self.what, "another run")
        self._renewer.start()

    def check(self) -> None:
        if self._owner() != self.owner:
            raise UserError(f"{self.what}: this run's claim on the set lapsed (not renewed for {LEASE_S:.0f} s) and "
                            "another run took it over; nothing was published")

    def release(self, failed: bool) -> None:
        """Remove the claim; a failure to is a warning after a run that succeeded (a claim left behind only lapses),
        and after one that failed, not said again (the storage's failure is the run's error already)."""
        self._stop.set()
        if self._renewer.is_alive():
            self._renewer.join()
        try:
            if self._owner() == self.owner:
                storage.remove_file(self.file)
            if self.takeover:
                storage.remove_file(self.takeover)
        except StorageError as error:
            if not failed:
                print(f"warning: {error} (the claim lapses in {LEASE_S:.0f} s)", file=sys.stderr)

    def _take_over(self, held: dict) -> None:
        """Take the claim held over, when it has expired: one run per expired claim gets the object naming it."""
        if not _lapsed(held):
            raise _refused(self.what, _holder(json.dumps(held)),
                          f" (a claim left by a run killed on another machine lapses {LEASE_S:.0f} s after it was "
                          "last renewed)")
        takeover = f"{self.file}-{held.get('owner', '')}"
        if not create_exclusive(takeover, self._content()):
            raise _refused(self.what, "another run", " (it is taking over a claim that lapsed)")
        self.takeover = takeover
        if self._read() != held or not self._replace():
            storage.remove_file(takeover)
            raise _refused(self.what, "another run", " (it claimed the set meanwhile)")

    def _replace(self) -> bool:
        storage.remove_file(self.file)
        return create_exclusive(self.file, self._content())

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                if self._owner() == self.owner:
                    overwrite(self.file, self._content())
            except StorageError:  # the next renewal tries again; check() refuses to publish a lapsed claim
                continue

    def _content(self) -> bytes:
        return json.dumps(_record(self.owner)).encode()

    def _read(self) -> dict | None:
        try:
            held = json.loads(storage.read_bytes(self.file))
        except StorageError:
            if storage.exists(self.file):
                raise
            return None
        except ValueError:
            held = None
        # not a claim this project wrote (or one half written, on storage that writes in place): never lapsed
        return held if isinstance(held, dict) else {"owner": "", "expires": float("inf")}

    def _owner(self) -> str:
        return (self._read() or {}).get("owner", "")


@contextmanager
def _url_claim(claim_file: str, what: str) -> Iterator[Claim]:
    claim = _UrlClaim(claim_file, what)
    claim.take()
    try:
        yield claim
    except BaseException:
        claim.release(failed=True)
        raise
    claim.release(failed=False)


def create_exclusive(url: str, content: bytes) -> bool:
    """Create the object at url holding content, unless it exists: whether this call created it. Atomic (one of two
    callers wins) on file:// (O_EXCL), memory:// (one process) and s3:// (s3fs sends If-None-Match: *, which S3
    honours since 2024); on other filesystems as atomic as their open(mode="xb") is (fsspec leaves it to each)."""
    with reaching(url):
        fs, inner = storage.filesystem(storage.no_pattern(url))
        fs.makedirs(fs._parent(inner), exist_ok=True)  # a local file:// folder must exist; object stores have none
        try:
            fs.pipe_file(inner, content, mode="create")
        except FileExistsError:
            return False
        return True


def overwrite(url: str, content: bytes) -> None:
    """Write content to the object at url in one request (an object store replaces an object whole)."""
    with reaching(url):
        fs, inner = storage.filesystem(storage.no_pattern(url))
        fs.pipe_file(inner, content)
