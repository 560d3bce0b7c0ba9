"""Corpora, the token cache and (x, y) batches.

A corpus is a bundled name (`datasets/` in a checkout, `femto/datasets` in a wheel), a downloaded one,
or any UTF-8 text file, TinyStories file, Reddit comment dump (NDJSON, plain or .zst) or folder of them.
It is read as a stream of text chunks, encoded once into a uint16/uint32 token file cached by content,
and served as random (B, T) windows. Nothing here prints: progress goes to a callback.
"""

from __future__ import annotations

import codecs
import hashlib
import http.client
import io
import json
import logging
import os
import pathlib
import re
import struct
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from femto.errors import ConfigError, DatasetError, TokenizerError
from femto.fileio import (
    fsync_directory, remove_stale_temporaries, temporary_prefix, write_atomic,
)  # fmt: skip
from femto.tokenizers.base import EOT_MARKER, Tokenizer, get_tokenizer_class

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)

# read and encode 1 MiB at a time: peak memory is a few chunks, not the corpus
CHUNK_BYTES = 1 << 20
# bump when a loader changes the text it produces, so old token caches are not reused
LOADER_VERSION = 1
# Pushshift dumps are compressed with long-distance matching: a default zstd window refuses them
ZSTD_MAX_WINDOW = 1 << 31
REDDIT_DROPPED = ("[deleted]", "[removed]")


@dataclass(frozen=True)
class CorpusInfo:
    """A corpus femto knows by name: bundled in the package, or downloadable with `femto data fetch`."""

    name: str
    directory: str  # under the bundled root or the data home
    file: str
    kind: str  # "text" or "tinystories"
    description: str
    url: str | None = None  # None: bundled
    sha256: str | None = None
    size: int | None = None


TINYSTORIES_TRAIN_URL = (
    "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-train.txt"
)

CATALOGUE = {
    "shakespeare": CorpusInfo(
        "shakespeare",
        "shakespeare",
        "tinyshakespeare.txt",
        "text",
        "tiny Shakespeare (char-rnn), 1.1 MB, public domain",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
    ),
    "tinystories": CorpusInfo(
        "tinystories",
        "tinystories",
        "TinyStories-valid-head.txt",
        "tinystories",
        "TinyStories validation excerpt, 2,387 stories, 2.0 MB, CDLA-Sharing-1.0",
        sha256="43fcb40a8fcdb9a7bf2d9d27700790716c75846cec7829288fdfb075ba76961d",
        size=2_000_681,
    ),
    "tinystories-full": CorpusInfo(
        "tinystories-full",
        "tinystories-full",
        "TinyStories-train.txt",
        "tinystories",
        "TinyStories training file, about 1.9 GB (femto data fetch tinystories)",
        url=TINYSTORIES_TRAIN_URL,
    ),
}
FETCH_ALIASES = {"tinystories": "tinystories-full"}


def bundled_root() -> pathlib.Path:
    """`femto/datasets` in an installed wheel, else the checkout's top-level `datasets/`."""
    here = pathlib.Path(__file__).resolve().parent
    installed = here / "datasets"
    return installed if installed.is_dir() else here.parent / "datasets"


def default_data_home() -> pathlib.Path:
    """Where `femto data fetch` puts downloaded corpora unless the CLI is told otherwise."""
    return pathlib.Path.home() / ".cache" / "femto" / "datasets"


def corpus_path(info: CorpusInfo, data_home: pathlib.Path | None = None) -> pathlib.Path:
    root = bundled_root() if info.url is None else (data_home or default_data_home())
    return root / info.directory / info.file


# ---- corpora ----------------------------------------------------------------------------------


def _file_kind(path: pathlib.Path) -> str:
    """'reddit' for NDJSON comment dumps (.zst, .jsonl, .ndjson, RC_YYYY-MM), 'tinystories' for text
    with <|endoftext|> separator lines, else 'text'."""
    name = path.name.lower()
    if name.endswith((".zst", ".jsonl", ".ndjson")) or re.fullmatch(
        r"rc_\d{4}-\d{2}(\.json)?", name
    ):
        return "reddit"
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if re.search(rb"(?m)^<\|endoftext\|>\r?$", head):
        return "tinystories"
    return "text"


class Corpus:
    """A named list of files, each read by its kind's loader as a stream of text chunks.

    `eot` is the end-of-text marker the text holds between documents (TinyStories), or None.
    After a full pass, `skipped` counts Reddit lines that were malformed (skipped) or deleted/removed.
    """

    def __init__(self, name: str, files: Sequence[tuple[pathlib.Path, str]]) -> None:
        if not files:
            raise DatasetError(f"corpus {name!r} has no files")
        self.name = name
        self.files = [(pathlib.Path(p), kind) for p, kind in files]
        self.eot = EOT_MARKER if any(kind == "tinystories" for _, kind in self.files) else None
        self.skipped = _fresh_skipped()
        self._fingerprint: str | None = None

    @property
    def paths(self) -> list[pathlib.Path]:
        return [p for p, _ in self.files]

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)

    def __repr__(self) -> str:
        return f"Corpus({self.name!r}, {len(self.files)} file(s), {self.size_bytes:,} bytes)"

    def texts(self) -> Iterator[str]:
        """The training text as chunks of about CHUNK_BYTES, each ending at a line or document end."""
        for text, _ in self.chunks():
            yield text

    def chunks(self) -> Iterator[tuple[str, int]]:
        """(text chunk, source bytes consumed so far in the whole corpus), for progress bars."""
        self.skipped = _fresh_skipped()
        loaders = {"text": _read_text, "tinystories": _read_tinystories, "reddit": _read_reddit}
        done = 0
        last = ""
        for path, kind in self.files:
            new_file = True
            for text, consumed in loaders[kind](path, self.skipped):
                if not text:
                    continue
                # files are joined on a line boundary, so two files never fuse their edge lines
                if new_file and last and not last.endswith("\n"):
                    yield "\n", done
                new_file = False
                last = text
                yield text, done + consumed
            done += path.stat().st_size
        produced = bool(last)
        if not produced:
            raise DatasetError(
                f"corpus {self.name!r} holds no text ({', '.join(map(str, self.paths))}): "
                "it is empty or every comment was deleted"
            )

    def summary(self) -> str | None:
        """What the last full pass made of a Reddit dump, in one line (None for other corpora):
        comments kept, deleted/removed ones dropped, malformed lines skipped and the first's
        reason."""
        if not any(kind == "reddit" for _, kind in self.files):
            return None
        s = self.skipped
        if not s.get("kept"):
            return None  # not read yet (or a token cache from before these counts)
        line = (
            f"corpus {self.name!r}: kept {s['kept']:,} comment(s), dropped {s['deleted']:,} "
            f"deleted or removed, skipped {s['malformed']:,} malformed line(s)"
        )
        if s["malformed"] and s.get("first_malformed"):
            line += f" (first: {s['first_malformed']})"
        return line

    def fingerprint(self) -> str:
        """sha256 of the files' contents and kinds and the loader version: the token cache key."""
        if self._fingerprint is None:
            digest = hashlib.sha256(f"femto-corpus-{LOADER_VERSION}".encode())
            for path, kind in self.files:
                digest.update(f"\0{kind}\0".encode())
                with open(path, "rb") as f:
                    while block := f.read(4 * CHUNK_BYTES):
                        digest.update(block)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def resolve_corpus(spec: str, data_home: pathlib.Path | None = None) -> Corpus:
    """A bundled or downloaded corpus by name, or a UTF-8 file or folder of files by path."""
    if spec in CATALOGUE:
        info = CATALOGUE[spec]
        path = corpus_path(info, data_home)
        if not path.is_file():
            if info.url is not None:
                raise DatasetError(
                    f"corpus {spec!r} is not downloaded ({path} is missing): "
                    f"run `femto data fetch {spec}`"
                )
            raise DatasetError(f"bundled corpus {spec!r} is missing from this install: {path}")
        return Corpus(spec, [(path, info.kind)])
    path = pathlib.Path(spec).expanduser()
    if not path.exists():
        raise DatasetError(
            f"no corpus at {spec!r}: not a file or folder, and not a known corpus name "
            f"({', '.join(CATALOGUE)}; see `femto data list`)"
        )
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DatasetError(f"corpus folder {path} holds no files")
    else:
        files = [path]
    for f in files:
        if f.stat().st_size == 0:
            raise DatasetError(f"corpus file {f} is empty (0 bytes)")
    return Corpus(path.name or str(path), [(f, _file_kind(f)) for f in files])


# ---- loaders: each yields (text, bytes of the file consumed so far) ---------------------------


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


def _read_text(path: pathlib.Path, skipped: dict) -> Iterator[tuple[str, int]]:
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


def _read_tinystories(path: pathlib.Path, skipped: dict) -> Iterator[tuple[str, int]]:
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


def _zstd_blocks(raw: io.BufferedReader, path: pathlib.Path) -> Iterator[bytes]:
    """Decompressed blocks of every zstandard frame in `raw`; a file that ends inside a frame (a cut
    download) is a DatasetError, not a silently shorter corpus."""
    import zstandard

    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    frame, inside = dctx.decompressobj(), False
    while block := raw.read(CHUNK_BYTES):
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
            for line in io.BufferedReader(raw, buffer_size=CHUNK_BYTES):
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


def _fresh_skipped() -> dict:
    """A corpus pass's counts: Reddit lines malformed (skipped), comments deleted/removed and kept,
    and the first malformed line's place and reason."""
    return {"malformed": 0, "deleted": 0, "kept": 0, "first_malformed": None}


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


def _read_reddit(path: pathlib.Path, skipped: dict) -> Iterator[tuple[str, int]]:
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
        if size >= CHUNK_BYTES:
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


# ---- downloads --------------------------------------------------------------------------------

FETCH_BLOCK = 1 << 20
# Hugging Face answers a download with a redirect that carries the LFS object's sha256 here
CHECKSUM_HEADERS = ("X-Linked-ETag", "ETag")


class _RecordingRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib does, remembering each hop's headers (the checksum may be on
    the first one)."""

    def __init__(self) -> None:
        self.headers: list = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and req.has_header("Range"):
            new.add_unredirected_header("Range", req.get_header("Range"))
        return new


def _server_sha256(all_headers: list) -> str | None:
    for headers in all_headers:
        for name in CHECKSUM_HEADERS:
            value = (headers.get(name) or "").strip().strip('"').removeprefix("W/").strip('"')
            if re.fullmatch(r"[0-9a-f]{64}", value):
                return value
    return None


def fetch_corpus(
    name: str,
    data_home: pathlib.Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    progress: Progress | None = None,
    timeout: float = 60.0,
) -> pathlib.Path:
    """Download a catalogue corpus into the data home and return its path.

    Resumable: bytes already in `<file>.part` are kept and the rest is asked for with an HTTP Range
    request. The file is checked against a sha256 (the catalogue's, the `sha256` argument, or the
    one the server publishes for it) before it is renamed into place.
    """
    name = FETCH_ALIASES.get(name, name)
    info = CATALOGUE.get(name)
    if info is None or info.url is None:
        remote = [n for n, i in CATALOGUE.items() if i.url is not None]
        raise DatasetError(
            f"{name!r} is not a downloadable corpus: `femto data fetch` knows "
            f"{', '.join(list(FETCH_ALIASES) + remote)}"
        )
    url = url or info.url
    expected = (sha256 or info.sha256 or "").lower() or None
    if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise DatasetError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    final = corpus_path(info, data_home)
    if final.is_file():
        logger.info("%s already present at %s", name, final)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")

    digest = hashlib.sha256()
    have = part.stat().st_size if part.is_file() else 0
    if have:
        with open(part, "rb") as f:  # re-hash what an earlier, interrupted run left
            while block := f.read(4 * FETCH_BLOCK):
                digest.update(block)

    redirects = _RecordingRedirects()
    opener = urllib.request.build_opener(redirects)
    request = urllib.request.Request(url, headers={"User-Agent": "femto"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file already holds the whole body
            response = None
            redirects.headers.append(exc.headers)
        else:
            raise DatasetError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DatasetError(
            f"cannot reach {url} ({getattr(exc, 'reason', exc)}); "
            f"{have:,} bytes are kept in {part} for the next try"
        ) from None

    if response is not None:
        with response:
            redirects.headers.append(response.headers)
            if have and response.status != 206:  # the server ignored Range: start over
                have = 0
                digest = hashlib.sha256()
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else 0
            done = have
            try:
                with open(part, "ab" if have else "wb") as f:
                    while block := response.read(FETCH_BLOCK):
                        f.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, max(total, done))
                    f.flush()
                    os.fsync(f.fileno())
            except (OSError, http.client.HTTPException) as exc:
                raise DatasetError(
                    f"download of {url} was interrupted at {done:,} bytes ({exc}); run "
                    f"`femto data fetch {name}` again to resume from {part}"
                ) from None
            if total and done < total:
                raise DatasetError(
                    f"download of {url} stopped at {done:,} of {total:,} bytes; run "
                    f"`femto data fetch {name}` again to resume from {part}"
                )

    actual = digest.hexdigest()
    expected = expected or _server_sha256(redirects.headers)
    if expected is None:
        raise DatasetError(
            f"no checksum is known for {url}, so the download in {part} is not trusted: pass "
            f"--sha256 HEX (its sha256 is {actual})"
        )
    if actual != expected:
        part.unlink(missing_ok=True)
        raise DatasetError(
            f"{url} failed its checksum: sha256 {actual}, expected {expected}; the download was "
            "removed, run the command again"
        )
    os.replace(part, final)
    fsync_directory(final.parent)
    return final


# ---- tokenizer training and the token cache ---------------------------------------------------


def train_tokenizer(
    corpus: Corpus,
    name: str,
    vocab_size: int | None = None,
    progress: Progress | None = None,
    **options,
) -> Tokenizer:
    """Train the tokenizer registered as `name` on `corpus`, giving it the corpus's end-of-text
    marker when the corpus has one. `progress` hears (bytes read, corpus bytes) as the tokenizer
    reads the corpus; what a trainer does after reading (sentencepiece fitting pieces) it cannot see."""
    cls = get_tokenizer_class(name)
    if corpus.eot is not None:
        options.setdefault("eot", corpus.eot)
    if progress is None:
        return cls.train(corpus.texts(), vocab_size, **options)
    total = corpus.size_bytes

    def texts() -> Iterator[str]:
        for text, done in corpus.chunks():
            yield text
            progress(done, total)
        progress(total, total)

    return cls.train(texts(), vocab_size, **options)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# A cache file is the raw ids followed by this trailer, so one rename publishes both and a cut or
# damaged file is told from a good one: magic, format version, bytes per id, id count, ids' sha256.
CACHE_MAGIC = b"FEMTOTOK"
CACHE_VERSION = 2
_TRAILER = struct.Struct("<8sII Q 32s")


def _cache_trailer(dtype: np.dtype, count: int, digest: bytes) -> bytes:
    return _TRAILER.pack(CACHE_MAGIC, CACHE_VERSION, dtype.itemsize, count, digest)


def open_token_cache(path: pathlib.Path, dtype: np.dtype, vocab_size: int) -> np.ndarray:
    """The ids of a cache file as a read-only memmap (N,), after checking its trailer (length and
    sha256) and that every id is below `vocab_size`; a DatasetError says what is wrong."""
    size = path.stat().st_size
    if size < _TRAILER.size:
        raise DatasetError(f"token cache {path} is truncated: {size} bytes, no trailer")
    with open(path, "rb") as f:
        f.seek(size - _TRAILER.size)
        magic, version, itemsize, count, digest = _TRAILER.unpack(f.read(_TRAILER.size))
    if magic != CACHE_MAGIC or version != CACHE_VERSION or itemsize != dtype.itemsize:
        raise DatasetError(f"token cache {path} has no valid trailer (truncated, or an old format)")
    if count * itemsize + _TRAILER.size != size or count == 0:
        raise DatasetError(
            f"token cache {path} is truncated: its trailer records {count:,} ids "
            f"({count * itemsize + _TRAILER.size:,} bytes), the file has {size:,}"
        )
    tokens = np.memmap(path, dtype=dtype, mode="r", shape=(count,))
    check = hashlib.sha256()
    for begin in range(0, count, CHUNK_BYTES):
        check.update(tokens[begin : begin + CHUNK_BYTES])
    if check.digest() != digest:
        raise DatasetError(f"token cache {path} is damaged: its sha256 differs from its trailer's")
    top = int(tokens.max())
    if top >= vocab_size:
        raise DatasetError(
            f"token cache {path} holds id {top}, outside the tokenizer's vocabulary of {vocab_size}"
        )
    return tokens


def encode_corpus(
    corpus: Corpus,
    tokenizer: Tokenizer,
    cache_dir: pathlib.Path,
    progress: Progress | None = None,
) -> np.ndarray:
    """The corpus's token ids as a read-only memmap (N,), encoded once and cached by content.

    The cache file is named after the corpus, the tokenizer and a hash of both contents, so a changed
    corpus or retrained tokenizer never reuses stale ids. Encoding streams chunk by chunk. A cache
    file that fails its checks (cut short, damaged, ids out of range) is rebuilt.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    key = hashlib.sha256(
        f"{corpus.fingerprint()}\0{tokenizer.fingerprint()}\0{dtype.str}".encode()
    ).hexdigest()[:20]
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", corpus.name)
    cache_dir = pathlib.Path(cache_dir)
    path = (
        cache_dir / f"{safe_name}.{tokenizer.name}.{key}.{'u16' if dtype.itemsize == 2 else 'u32'}"
    )
    counts_path = path.with_name(path.name + ".skipped.json")
    remove_stale_temporaries(cache_dir)  # partial caches of encoders that were killed
    if path.is_file():
        try:
            tokens = open_token_cache(path, dtype, tokenizer.vocab_size)
        except DatasetError as exc:
            logger.warning("%s; rebuilding it", exc)
        else:
            logger.info("token cache hit: %s", path)
            _load_skipped(corpus, counts_path)
            return tokens

    cache_dir.mkdir(parents=True, exist_ok=True)
    total = corpus.size_bytes
    count = 0
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            for text, done in corpus.chunks():
                ids = np.asarray(tokenizer.encode_buffer(text))
                if ids.dtype.kind not in "iu":  # an empty list, or a plugin's odd sequence
                    ids = ids.astype(np.int64)
                if ids.size:
                    if ids.min() < 0 or ids.max() >= tokenizer.vocab_size:
                        raise TokenizerError(
                            f"tokenizer {tokenizer.name!r} produced id {int(ids.max())} outside its "
                            f"vocabulary of {tokenizer.vocab_size}"
                        )
                    raw = ids.astype(dtype).tobytes()
                    f.write(raw)
                    digest.update(raw)
                    count += ids.size
                if progress is not None:
                    progress(done, total)
            if count == 0:
                raise DatasetError(f"corpus {corpus.name!r} encodes to no tokens")
            f.write(_cache_trailer(dtype, count, digest.digest()))
            f.flush()
            os.fsync(f.fileno())
        if corpus.summary() is not None:
            # a dump's counts beside its ids, so a cache hit can still say what the dump yielded
            write_atomic(counts_path, json.dumps(corpus.skipped).encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(cache_dir)
    if corpus.skipped["malformed"] or corpus.skipped["deleted"]:
        logger.info("corpus %s: %s", corpus.name, corpus.skipped)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def _load_skipped(corpus: Corpus, counts_path: pathlib.Path) -> None:
    """The counts of the pass that filled a token cache (absent for caches older than them)."""
    try:
        counts = json.loads(counts_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(counts, dict) and set(_fresh_skipped()) <= set(counts):
        corpus.skipped = counts


# ---- batches ----------------------------------------------------------------------------------


def check_windows(tokens: np.ndarray, block_size: int, what: str = "the corpus") -> None:
    """Raise DatasetError unless `tokens` holds at least one window of block_size + 1 tokens."""
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}")
    if len(tokens) < block_size + 1:
        raise DatasetError(
            f"{what} has {len(tokens):,} tokens, fewer than one training window "
            f"(block_size {block_size} + 1 = {block_size + 1}): use a smaller --block-size "
            "or a larger corpus"
        )


def train_val_split(tokens: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """First (1 - val_fraction) of the tokens for training, the rest for validation, by position
    (nanoGPT's split: shakespeare gives 1,003,854 / 111,540)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    split = int(len(tokens) * (1.0 - val_fraction))
    return tokens[:split], tokens[split:]


def get_batch(
    tokens: np.ndarray,
    batch_size: int,
    block_size: int,
    rng: np.random.Generator,
    what: str = "the training split",
) -> tuple[np.ndarray, np.ndarray]:
    """B random windows of T + 1 tokens: x (B, T) int32 and y (B, T) int32, y = x shifted by one."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            "get_batch needs a seeded np.random.Generator (np.random.default_rng(seed))"
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    check_windows(tokens, block_size, what)
    starts = rng.integers(0, len(tokens) - block_size, size=batch_size)  # (B,)
    windows = np.asarray(tokens[starts[:, None] + np.arange(block_size + 1)], dtype=np.int32)
    x = np.ascontiguousarray(windows[:, :-1])  # (B, T)
    y = np.ascontiguousarray(windows[:, 1:])  # (B, T)
    return x, y


def micro_batch_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of micro-batch `index` of a run's one global stream: its windows (get_batch),
    then its dropout seeds, are drawn from it. Keyed by the index alone, so any process can draw any
    micro-batch: a data-parallel rank takes its share of each step, and a resumed run, on any number
    of processes, continues at the index it saved."""
    return np.random.default_rng([seed, 1, index])


def eval_windows(
    tokens: np.ndarray, block_size: int, batch_size: int, what: str = "the validation split"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every full window once, starts 0, T, 2T, ... with start + T + 1 <= N, in batches of up to B:
    x (b, T) int32, y (b, T) int32 with b <= B (the last batch may be smaller)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    check_windows(tokens, block_size, what)
    n_windows = (len(tokens) - 1) // block_size
    offsets = np.arange(block_size + 1)
    for first in range(0, n_windows, batch_size):
        starts = np.arange(first, min(first + batch_size, n_windows)) * block_size  # (b,)
        windows = np.asarray(tokens[starts[:, None] + offsets], dtype=np.int32)
        yield np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])
