"""Errors a user can act on, and how one is said on one line."""

import errno
import re


class UserError(Exception):
    """Something the user can fix (a missing file, a bad value); printed without a traceback."""


# Errors of the files and folders a user names (OUT_DIR read-only or a file, a full disk...), as opposed to a bug.
USERS_FILE_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                     errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}


def file_error(error: OSError) -> str:
    """The file and what went wrong with it, on one line: "path: Read-only file system"."""
    if error.filename is not None:
        hint = " (a part of this path is a file, not a folder)" if error.errno == errno.ENOTDIR else ""
        return f"{error.filename}: {error.strerror}{hint}"
    # pyarrow's: "[Errno 30] Failed to open local file '...'. Detail: [errno 30] Read-only file system"
    return re.sub(r"^\[Errno \d+\] ", "", str(error)).partition("\n")[0]


def error_line(error: Exception) -> str:
    """The exception's type and the first line of its message: a library's error quoted in a UserError."""
    return f"{type(error).__name__}: {str(error).strip().partition(chr(10))[0]}"
