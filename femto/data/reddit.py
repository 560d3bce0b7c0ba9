"""Reddit comment dumps (Pushshift NDJSON, plain or .zst) read as text: one paragraph per comment,
deleted and removed comments dropped, malformed lines skipped and counted."""

from __future__ import annotations

import io
import json
import logging
import pathlib
import re
from collections.abc import Iterator

from femto.data import loaders
from femto.errors import DatasetError

logger = logging.getLogger(__name__)

# Pushshift dumps are compressed with long-distance matching: a default zstd window refuses them
ZSTD_MAX_WINDOW = 1 << 31
REDDIT_DROPPED = ("[deleted]", "[removed]")


def _zstd_blocks(raw: io.BufferedReader, path: pathlib.Path) -> Iterator[bytes]:
    """Decompressed blocks of every zstandard frame in `raw`; a file that ends inside a frame (a cut
    download) is a DatasetError, not a silently shorter corpus."""
    import zstandard

    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    frame, inside = dctx.decompressobj(), False
    while block := raw.read(loaders.CHUNK_BYTES):
        while block:
            out = frame.decompress(block)
            inside = True
            if out:
                yield out
            if frame.eof:  # the next frame, if any, starts in what this one left over
                block = frame.unused_data
                frame, inside = dctx.decompressobj(), False
            else:
                block = b""
    if inside:
        raise DatasetError(
            f"{path} is truncated: its last zstandard frame ends early (an interrupted download?); "
            "download it again"
        )


def _binary_lines(path: pathlib.Path) -> Iterator[tuple[bytes, int]]:
    """Lines of a plain or zstandard-compressed file, with the compressed bytes read so far."""
    import zstandard  # only Reddit dumps need it

    with open(path, "rb") as raw:
        if not path.name.lower().endswith(".zst"):
            for line in io.BufferedReader(raw, buffer_size=loaders.CHUNK_BYTES):
                yield line, raw.tell()
            return
        pending: list[bytes] = []  # the unfinished line, in pieces (a long line is not re-copied)
        try:
            for block in _zstd_blocks(raw, path):
                if b"\n" not in block:
                    pending.append(block)
                    continue
                lines = block.split(b"\n")
                lines[0] = b"".join([*pending, lines[0]])
                pending = [lines.pop()]
                for line in lines:
                    yield line + b"\n", raw.tell()
        except zstandard.ZstdError as exc:  # a corrupt frame
            raise DatasetError(f"{path} cannot be decompressed as zstandard: {exc}") from None
        if any(pending):
            yield b"".join(pending), raw.tell()


def _json_problem(exc: json.JSONDecodeError) -> str:
    """json's reason for a bad line, except that a line cut short (a truncated download, a partial
    write) says so: json would report the cut as whatever it expected next."""
    if exc.msg.startswith("Unterminated string") or exc.pos >= len(exc.doc.rstrip()):
        return f"truncated JSON: the line ends after {len(exc.doc):,} characters, inside the object"
    return str(exc)


def _reddit_paragraph(body: str) -> str:
    """A comment as one paragraph: Reddit's HTML escaping undone, blank lines inside it folded."""
    body = body.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    body = body.replace("\r\n", "\n").replace("\r", "\n").strip()
    return re.sub(r"\n[ \t]*(?:\n[ \t]*)+", "\n", body)


def read_reddit(path: pathlib.Path, skipped: dict) -> Iterator[tuple[str, int]]:
    """NDJSON comments (one object per line with a string "body") -> one comment per paragraph,
    separated by blank lines. Deleted and removed comments are dropped; malformed lines are
    skipped and counted, and a dump with no good line at all is an error."""
    pieces: list[str] = []
    size = 0
    lines = good = malformed = 0
    first_bad: tuple[int, str] | None = None
    consumed = 0
    for lineno, (line, consumed) in enumerate(_binary_lines(path), 1):
        if not line.strip():
            continue
        lines += 1
        try:
            # without its line ending, so a line cut inside a string reads as cut, not as a
            # control character in the string
            obj = json.loads(line.rstrip(b"\r\n"))
            body = obj["body"]
            if not isinstance(body, str):
                raise TypeError(f'"body" is {type(body).__name__}, not a string')
        # UnicodeDecodeError is a ValueError; JSON nested too deep for the parser a RecursionError
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            malformed += 1
            if first_bad is None:
                if isinstance(exc, json.JSONDecodeError):
                    reason = _json_problem(exc)
                elif isinstance(exc, KeyError):
                    reason = f"no {exc} field"
                else:
                    reason = str(exc)
                first_bad = (lineno, reason.splitlines()[0][:120])
                if skipped.get("first_malformed") is None:
                    skipped["first_malformed"] = f"{path.name} line {lineno}: {first_bad[1]}"
            continue
        good += 1
        if body.strip() in REDDIT_DROPPED:
            skipped["deleted"] += 1
            continue
        paragraph = _reddit_paragraph(body)
        if not paragraph:
            continue
        skipped["kept"] += 1
        pieces.append(paragraph + "\n\n")
        size += len(paragraph) + 2
        if size >= loaders.CHUNK_BYTES:
            yield "".join(pieces), consumed
            pieces, size = [], 0
    skipped["malformed"] += malformed
    if lines and not good:
        raise DatasetError(
            f"{path}: none of its {lines:,} lines is a Reddit comment (a JSON object with a string "
            f'"body"); line {first_bad[0]}: {first_bad[1]}'
        )
    if malformed:  # the CLI prints Corpus.summary() once per command; this is for library users
        logger.info(
            "%s: skipped %d malformed line(s) of %d (first at line %d: %s)",
            path,
            malformed,
            lines,
            first_bad[0],
            first_bad[1],
        )
    if pieces:
        yield "".join(pieces), consumed
