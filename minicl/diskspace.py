"""Running out of disk space, and how the config repo's code tells an error.

``NoRoom`` is raised before a commit's files are written when they would not fit (the checkout
store checks); ``describe`` says what went wrong for a status or a log line, naming the file of
an OSError and, when the disk is full, the space left there; ``mb`` writes a size as people
read it.
"""

import errno
import os
import shutil

from minicl.errors import MiniclError


class NoRoom(MiniclError, OSError):
    """Not enough free space to write a commit's files (checked before writing any)."""


def mb(size):
    return f"{size / 2**20:.1f} MB"


def describe(exc):
    """What went wrong, naming the file for an OSError (and the free space, for a full disk)."""
    if isinstance(exc, NoRoom):
        return exc.strerror
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        text = f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}{where}"
        if exc.errno == errno.ENOSPC and exc.filename:
            folder = os.path.dirname(exc.filename)
            while folder != "/" and not os.path.isdir(folder):  # the staging folder is gone
                folder = os.path.dirname(folder)
            text += f"; {mb(shutil.disk_usage(folder).free)} free there"
        return text
    return f"{type(exc).__name__}: {exc}"
