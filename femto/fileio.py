"""Durable file writes shared by checkpoints, tokenizers and the token cache: stdlib only, like errors.

A file is written under a temporary name, fsynced, renamed over its target, and the directory fsynced,
so a crash or kill at any instant leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable

# the writer's pid and a hash of its host name: a temporary is removed only once its writer is dead
_WRITER = re.compile(r"^\..+\.p(\d+)-([0-9a-f]{8})\.[A-Za-z0-9_]+\.(?:tmp|new|old)$")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temporary_prefix(path: pathlib.Path) -> str:
    """mkstemp/mkdtemp prefix for a temporary standing in for `path`: `.NAME.pPID-HOST.`, so that
    `remove_stale_temporaries` can tell whether its writer still runs."""
    return f".{pathlib.Path(path).name}.p{os.getpid()}-{_host_tag()}."


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process: alive
        return True
    return True


def stale_temporary_of(name: str) -> str | None:
    """The target name (`metrics.jsonl`) of a temporary whose writer, on this host, is dead; None for
    any other name."""
    match = _WRITER.match(name)
    if match is None or match.group(2) != _host_tag() or _writer_alive(int(match.group(1))):
        return None
    return name[1:].split(f".p{match.group(1)}-", 1)[0]


def remove_stale_temporaries(directory: pathlib.Path) -> list[pathlib.Path]:
    """Delete the temporaries (files or folders) in `directory` whose writer, a process on this
    host, is dead; a kill -9 mid-write leaves them. Returns what was removed."""
    directory = pathlib.Path(directory)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if stale_temporary_of(entry.name) is None:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:  # another process cleaned it first
            continue
        except OSError:  # read-only or not ours: leave it, it harms nothing
            continue
        removed.append(pathlib.Path(entry.path))
    return removed


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
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are ordinary readable files
        write_synced(pathlib.Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
