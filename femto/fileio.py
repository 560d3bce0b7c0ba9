"""Durable file writes shared by checkpoints, tokenizers and the token cache: stdlib only, like errors.

A file is written under a temporary name, fsynced, renamed over its target, and the directory fsynced,
so a crash or kill at any instant leaves either the old file or the new one, never a torn one. A
write that fails (ENOSPC, EFBIG, EROFS, EACCES, EIO, ...) removes its partial file and raises
WriteFailed naming the file and the cause. Bytes go through os.write; short writes are resumed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pathlib
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable

from femto.errors import WriteFailed

# os.write takes at most this much per call: a short write or a failure then costs little to redo
WRITE_CHUNK = 1 << 20
_HINTS = {
    errno.ENOSPC: "the disk is full: free space, or pick a directory on another disk",
    errno.EDQUOT: "the disk quota is used up: free space, or pick a directory on another disk",
    errno.EFBIG: "the file would pass the file size limit (`ulimit -f`): raise it",
    errno.EROFS: "the filesystem is read-only: pick a writable directory",
    errno.EACCES: "permission denied: pick a directory you can write",
    errno.EPERM: "permission denied: pick a directory you can write",
    errno.EIO: "an I/O error: check the disk",
}


def write_failed(path: pathlib.Path | str, exc: OSError) -> WriteFailed:
    """The one-line error for a failed write of `path`."""
    name = errno.errorcode.get(exc.errno, "")
    cause = f"{exc.strerror or exc} ({name})" if name else f"{exc.strerror or exc}"
    hint = _HINTS.get(exc.errno)
    return WriteFailed(f"cannot write {path}: {cause}" + (f"; {hint}" if hint else ""))


def write_all(fd: int, pieces: Iterable[bytes | bytearray | memoryview]) -> None:
    """Write every byte of `pieces` to `fd`, resuming short writes (os.write may write less than it
    was given, on a nearly full disk for one)."""
    for piece in pieces:
        view = memoryview(piece).cast("B")
        while view.nbytes:
            written = os.write(fd, view[:WRITE_CHUNK])
            view = view[written:]


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
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise write_failed(path, exc) from None
    try:
        write_all(fd, pieces)
        os.fsync(fd)
    except BaseException as exc:
        os.close(fd)
        pathlib.Path(path).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_failed(path, exc) from None
        raise
    os.close(fd)


def write_atomic(path: pathlib.Path, data: bytes | Iterable[bytes | memoryview]) -> None:
    """Replace `path` with `data` atomically and durably."""
    path = pathlib.Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_failed(path, exc) from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are ordinary readable files
        try:
            write_synced(pathlib.Path(tmp), data)
        except WriteFailed as exc:  # name the file the user knows, not the temporary one
            raise WriteFailed(str(exc).replace(str(tmp), str(path), 1)) from None
        os.replace(tmp, path)
    except OSError as exc:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise write_failed(path, exc) from None
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def append_line(path: pathlib.Path, line: bytes) -> None:
    """Append one whole line to `path` and fsync it. A write that fails part-way is cut back off, so
    the file never ends in a partial line because of it."""
    # O_NOFOLLOW: never append through a symlink (a dangling one would create a file elsewhere)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise write_failed(path, exc) from None
    try:
        size = os.fstat(fd).st_size
        try:
            write_all(fd, [line])
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass  # the reader skips a torn last line; the next start rewrites the file whole
            raise write_failed(path, exc) from None
    finally:
        os.close(fd)
