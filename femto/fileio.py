"""Durable file writes shared by checkpoints, tokenizers and the token cache: stdlib only, like errors.

A file is written under a temporary name, fsynced, renamed over its target, and the directory fsynced,
so a crash or kill at any instant leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Iterable


def fsync_directory(directory: pathlib.Path) -> None:
    """Make a rename inside `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename itself is done
        pass
    finally:
        os.close(fd)


def write_synced(path: pathlib.Path, data: bytes | Iterable[bytes | memoryview]) -> None:
    """Write `data` (bytes, or pieces written in turn, so a large file need not be joined in
    memory first) to `path` and fsync it (no rename: for files the caller renames later)."""
    pieces = [data] if isinstance(data, (bytes, bytearray)) else data
    with open(path, "wb") as f:
        f.writelines(pieces)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: pathlib.Path, data: bytes | Iterable[bytes | memoryview]) -> None:
    """Replace `path` with `data` atomically and durably."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are ordinary readable files
        write_synced(pathlib.Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
