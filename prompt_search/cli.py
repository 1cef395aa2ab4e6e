"""How every top-level script runs: errors a user can act on printed as one line instead of a traceback, and no
process the script started outliving it."""

import sys
from collections.abc import Callable

from prompt_search.errors import USERS_FILE_ERRORS, UserError, file_error


def run(main: Callable[[list[str]], None]) -> None:
    """Run a script's main(argv); a UserError exits with status 1 and its message, Ctrl-C with status 130.

    A file or folder the user named that cannot be used (OUT_DIR read-only, or a file; a full disk) exits with
    status 1 and one line naming it. No process the script started outlives it, whether it succeeds or fails.
    """
    try:
        main(sys.argv[1:])
    except UserError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        print("interrupted: outputs already complete are kept; run it again to go on", file=sys.stderr)
        sys.exit(130)
    except OSError as error:
        if error.errno not in USERS_FILE_ERRORS:
            raise
        sys.exit(f"error: {file_error(error)}")
    finally:
        _stop_resource_tracker()


def _stop_resource_tracker() -> None:
    """Stop multiprocessing's resource tracker, if a pool started one, and wait for it to exit.

    Pools are shut down (their workers joined) where they are used, but the tracker they start lives on until it
    sees the script's end, and would end after the script: stopped here, once every pool is done.
    """
    from multiprocessing import resource_tracker, synchronize, util

    # A stopping tracker unlinks the semaphores still registered with it (a spawn pool's locks the script still
    # holds); their own finalizers would then fail at exit, a traceback each. Run those finalizers first, as exit does.
    for finalizer in list(util._finalizer_registry.values()):
        if getattr(finalizer, "_callback", None) is synchronize.SemLock._cleanup:
            finalizer()
    resource_tracker._resource_tracker._stop()
