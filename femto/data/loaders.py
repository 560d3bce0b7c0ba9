"""Plain text and TinyStories files read as a stream of text chunks, each ending at a line or
document end. Each loader yields (text, bytes of the file consumed so far)."""

from __future__ import annotations

import codecs
import pathlib
import re
from collections.abc import Callable, Iterator

from femto.errors import DatasetError
from femto.tokenizers.base import EOT_MARKER

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)

# read and encode 1 MiB at a time: peak memory is a few chunks, not the corpus
CHUNK_BYTES = 1 << 20


def fresh_skipped() -> dict:
    """A corpus pass's counts: Reddit lines malformed (skipped), comments deleted/removed and kept,
    and the first malformed line's place and reason."""
    return {"malformed": 0, "deleted": 0, "kept": 0, "first_malformed": None}


def _decoded_blocks(path: pathlib.Path) -> Iterator[tuple[str, int]]:
    """The file as UTF-8 text in blocks; a bad byte is a DatasetError with its offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    consumed = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK_BYTES)
            final = not block
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final)
            except UnicodeDecodeError as exc:
                offset = consumed - pending + exc.start
                bad = exc.object[exc.start : exc.start + 1].hex()
                raise DatasetError(
                    f"{path} is not UTF-8: byte 0x{bad} at offset {offset:,} cannot be decoded "
                    "(convert it first, e.g. `iconv -f latin1 -t utf-8`)"
                ) from None
            consumed += len(block)
            yield text, consumed
            if final:
                return


def read_text(path: pathlib.Path, skipped: dict) -> Iterator[tuple[str, int]]:
    """Plain text, verbatim, cut after the last newline of each block."""
    carry = ""
    for text, consumed in _decoded_blocks(path):
        text = carry + text
        cut = text.rfind("\n") + 1
        if cut == 0 and len(text) < 8 * CHUNK_BYTES:  # no newline yet: wait for one, within reason
            carry = text
            continue
        cut = cut or len(text)
        carry = text[cut:]
        yield text[:cut], consumed
    if carry:
        yield carry, path.stat().st_size


_EOT_LINE = re.compile(r"(?m)^" + re.escape(EOT_MARKER) + r"[ \t\r]*\n")


def read_tinystories(path: pathlib.Path, skipped: dict) -> Iterator[tuple[str, int]]:
    """Stories separated by <|endoftext|> lines become `story<|endoftext|>`, each story stripped of
    the blank lines and spaces some records start or end with."""
    carry = ""  # always starts at a line start: the unfinished story, then any unfinished line
    for text, consumed in _decoded_blocks(path):
        text = carry + text
        cut = text.rfind("\n") + 1
        text, carry = text[:cut], text[cut:]
        parts = _EOT_LINE.split(text)
        # every part but the last was closed by a separator; the last continues in the next block
        carry = parts.pop() + carry
        out = "".join(s + EOT_MARKER for s in (p.strip() for p in parts) if s)
        if out:
            yield out, consumed
    tail = carry.strip()
    if tail.endswith(EOT_MARKER):  # a separator on the very last line, without a newline
        tail = tail[: -len(EOT_MARKER)].strip() + EOT_MARKER
    if tail and tail != EOT_MARKER:
        yield tail, path.stat().st_size
