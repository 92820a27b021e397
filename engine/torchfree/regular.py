"""Reading a file that must be a regular one, without ever blocking.

In a shared workspace another user may put a FIFO where a run's file should be; a plain
``open()`` of a FIFO waits for a writer forever. These open with ``O_NONBLOCK`` and refuse
anything but a regular file. A leaf module (the standard library only): every reader of a run
folder can use it without an import cycle (runfolder.py imports slurm.py lazily, and
slurm.py reads its records with these)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def open_regular(path: Path, mode: str = "rb"):  # -> BinaryIO
    """``open(path, mode)`` (``"rb"`` or ``"r+b"``) for a regular file only: a FIFO or a
    device raises OSError (EINVAL) instead of blocking (or never ending)."""
    flags = {"rb": os.O_RDONLY, "r+b": os.O_RDWR}[mode]
    fd = os.open(path, flags | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file. A FIFO, a device or a folder in its place
    raises OSError at once (opening a FIFO to read would wait for a writer forever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise OSError(errno.EINVAL, f"{kind} (a FIFO, a device or a socket?)", str(path))
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
