"""Bounded reads of files femto did not necessarily write: stdlib and numpy, like errors and fileio.

A run directory or tokenizer folder may hold anything a user (or an attacker) put there: a link
to /dev/zero, a FIFO, a file of many gigabytes, JSON nested a million deep. Every read here opens
only regular files inside a given root, never blocks on a FIFO, and refuses sizes and depths past
a limit.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import stat

from femto.errors import FemtoError

# a config.json or tokenizer description is a few kilobytes; a vocab.json a few megabytes
MAX_JSON_BYTES = 64 << 20
# femto's own JSON is at most 4 deep; 64 leaves room for plugins, far below the recursion limit
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def open_regular(
    path: pathlib.Path, error: type[FemtoError], root: pathlib.Path | None = None
) -> int:
    """A read-only descriptor of `path`, a regular file (after symlinks) inside `root`.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; fstat then
    refuses it, a device or a directory. Raises `error` naming the path; a missing file raises
    FileNotFoundError so callers keep their own "created by ..." messages.
    """
    path = pathlib.Path(path)
    if root is not None:
        real_root = os.path.realpath(root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise error(
                f"{path} leads outside {root} (to {real}): femto reads only files inside the "
                "directory; copy the file in instead of linking to it"
            )
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO without a writer, opened for reading: never here
            raise error(f"{path} is not a regular file (a FIFO or socket)") from None
        raise error(f"{path} cannot be read: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = (
            "a directory" if stat.S_ISDIR(mode)
            else "a FIFO" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode)
            else "not a regular file"
        )  # fmt: skip
        raise error(f"{path} is {kind}, not a regular file")
    return fd


def check_links(directory: pathlib.Path, names, error: type[FemtoError]) -> None:
    """Refuse a symlink among `names` in `directory` that leads outside it or nowhere: writing
    through it (metrics.jsonl opened for append) would create or change a file elsewhere."""
    directory = pathlib.Path(directory)
    real_root = os.path.realpath(directory)
    for name in names:
        path = directory / name
        if not path.is_symlink():
            continue
        real = os.path.realpath(path)
        if not os.path.exists(real):
            target = os.readlink(path)
            raise error(f"{path} is a symlink to {target}, which does not exist: remove it")
        if os.path.commonpath([real_root, real]) != real_root:
            raise error(
                f"{path} leads outside {directory} through a symlink (to {real}): femto keeps a "
                "run's files inside its directory; replace the link with the file"
            )


def read_bytes(
    path: pathlib.Path,
    error: type[FemtoError],
    root: pathlib.Path | None = None,
    limit: int | None = None,
) -> bytes:
    """The whole of a regular file inside `root`, refused with `error` when larger than `limit`."""
    fd = open_regular(path, error, root)
    try:
        size = os.fstat(fd).st_size
        if limit is not None and size > limit:
            raise error(
                f"{path} is {size:,} bytes, more than the {limit:,} femto reads for such a file "
                "(is it the right file?)"
            )
        chunks = []
        remaining = size
        while remaining > 0:  # a file that grows while read is cut at its size when opened
            chunk = os.read(fd, min(remaining, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise error(f"{path} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)


def json_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in JSON text (skipping strings, which may hold brackets)."""
    import numpy as np  # only for the running sum: a Python loop over a large header is slow

    bare = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    if bare.size == 0:
        return 0
    steps = np.zeros(bare.size, dtype=np.int64)
    steps[(bare == ord("[")) | (bare == ord("{"))] = 1
    steps[(bare == ord("]")) | (bare == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def loads_json(
    raw: bytes,
    source: str,
    error: type[FemtoError],
    max_depth: int = MAX_JSON_DEPTH,
    part: str = "",
):
    """Parse UTF-8 JSON bytes, refusing nesting deeper than `max_depth` before the parser recurses.
    `part` names the JSON inside `source` in messages ("its header"), empty for the whole file."""
    depth = json_depth(raw)
    subject = f"{part} " if part else ""
    if depth > max_depth:
        raise error(
            f"{source} is corrupt: {subject or 'its JSON '}nests {depth:,} levels deep, more than "
            f"the {max_depth} femto accepts"
        )
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        verb = "is " if part else ""
        raise error(f"{source} is corrupt: {subject}{verb}not UTF-8 JSON ({exc})") from None
