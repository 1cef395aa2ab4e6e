"""Child processes that die with the script that started them, even when it is killed (SIGKILL, the OOM killer).

A killed script cannot shut its children down, and they would live on: CSV-parsing workers (about 180 MB each),
img2dataset's download processes (until their images arrive) and its logger process (for ever: it loops until
told that the last shard is done).
"""

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
SPAWNER_PID = "PROMPT_SEARCH_SPAWNER_PID"  # the process whose spawned children die with it


def die_with(parent: int) -> None:
    """In a child process: exit as soon as parent, the process that started it, ends."""
    if sys.platform == "linux":  # the kernel sends SIGKILL when the parent dies
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(1)


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def spawned_children_die_with_me() -> None:
    """Have the processes multiprocessing spawns from here on call die_with(this process) as they start.

    For a library's processes (img2dataset's), started where no initializer can be given: the spawned process
    imports the script as __mp_main__ first, and the script calls die_with_spawner there. The pid travels in
    the environment, which spawned processes inherit.
    """
    os.environ[SPAWNER_PID] = str(os.getpid())


def die_with_spawner() -> None:
    """In a process multiprocessing spawned, while it imports the script: die with the process that spawned it,
    when that process called spawned_children_die_with_me. The children of such a child are left alone."""
    spawner = int(os.environ.get(SPAWNER_PID, "0"))
    if spawner == os.getppid():
        die_with(spawner)
    elif spawner and not process_exists(spawner):  # it was killed while this process started
        os._exit(1)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, another user's
        pass
    return True
