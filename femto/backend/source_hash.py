"""The hash of the C sources that femto._cpu carries: build_ffi.py embeds it (loading this file by
path, before femto can be imported), the CPU backend recomputes it in a source checkout to refuse a
stale build. Standard library only, for that reason."""

from __future__ import annotations

import hashlib
import pathlib


def source_hash(csrc: pathlib.Path) -> str:
    """16 hex digits over every header and C file in `csrc` (names and contents, sorted)."""
    digest = hashlib.sha256()
    for path in [*sorted(csrc.glob("*.h")), *sorted(csrc.glob("*.c"))]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
