"""A tokenizer folder (`femto tokenize train --out DIR`) replaced as a whole.

A tokenizer is several files (tokenizer.json and its own file); replacing them one by one lets a
kill between two renames leave a new model beside an old description, a folder that loads neither. So the
new tokenizer is written into a sibling folder and swapped with the old one in one rename (Linux's
renameat2 RENAME_EXCHANGE); the old one is then deleted.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pathlib
import shutil
import tempfile

from femto.errors import TokenizerError
from femto.fileio import (
    fsync_directory,
    remove_stale_temporaries,
    stale_temporary_of,
    temporary_prefix,
)
from femto.tokenizers.base import DESCRIPTION_FILE, Tokenizer, save_tokenizer

# the built-in tokenizers' own files; a plugin's is named by its tokenizer.json
KNOWN_FILES = {DESCRIPTION_FILE, "vocab.json", "tokenizer.model"}
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Swap two paths atomically; False where the system or filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [
        ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint
    ]  # fmt: skip
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _foreign_files(directory: pathlib.Path) -> list[str]:
    """Names in `directory` that are not a tokenizer's: replacing the folder would delete them."""
    allowed = set(KNOWN_FILES)
    try:
        import json

        named = json.loads((directory / DESCRIPTION_FILE).read_bytes()[: 1 << 20]).get("file")
        if isinstance(named, str):
            allowed.add(named)
    except (OSError, ValueError, AttributeError, RecursionError):
        pass
    return sorted(p.name for p in directory.iterdir() if p.name not in allowed)


def _restore_moved_aside(directory: pathlib.Path) -> None:
    """Without an atomic exchange the old folder is moved aside for an instant; a writer killed then
    leaves no folder at all, so its moved-aside copy is put back before stale halves are removed."""
    if directory.exists():
        return
    for entry in sorted(directory.parent.glob(f".{directory.name}.p*.old")):
        if entry.is_dir() and stale_temporary_of(entry.name) == directory.name:
            os.rename(entry, directory)
            return


def replace_tokenizer_folder(tokenizer: Tokenizer, directory: pathlib.Path) -> dict:
    """Save `tokenizer` as the folder `directory`, replacing what was there in one step, so a kill
    at any instant leaves the old tokenizer or the new one loadable. Returns its description."""
    directory = pathlib.Path(os.path.realpath(directory))  # a link to a folder: replace its target
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    _restore_moved_aside(directory)
    remove_stale_temporaries(parent)  # halves of swaps whose writer was killed
    if directory.exists():
        if not directory.is_dir():
            raise TokenizerError(f"--out {directory} is a file, not a folder")
        foreign = _foreign_files(directory)
        if foreign:
            raise TokenizerError(
                f"--out {directory} holds files that are not a tokenizer's "
                f"({', '.join(foreign[:5])}): replacing the tokenizer would delete them; pick an empty or tokenizer folder"
            )
    new = pathlib.Path(
        tempfile.mkdtemp(prefix=temporary_prefix(directory), suffix=".new", dir=parent)
    )
    try:
        os.chmod(new, 0o755)  # mkdtemp makes 0700; a tokenizer folder is an ordinary folder
        description = save_tokenizer(tokenizer, new)
        fsync_directory(new)
        if not directory.exists():
            os.rename(new, directory)
        elif _exchange(new, directory):
            shutil.rmtree(new)  # it holds the old tokenizer now
        else:  # no atomic swap here: the old folder is moved aside for the moment of the rename
            old = pathlib.Path(str(new)[: -len(".new")] + ".old")
            os.rename(directory, old)
            os.rename(new, directory)
            shutil.rmtree(old)
        fsync_directory(parent)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return description
