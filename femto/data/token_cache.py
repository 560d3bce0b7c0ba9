"""A corpus turned into tokens: the tokenizer trained on it, and its ids encoded once into a file
cached by content (the corpus's fingerprint and the tokenizer's)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
import struct
import tempfile
from collections.abc import Iterator

import numpy as np

from femto.data import loaders
from femto.data.corpora import Corpus
from femto.data.loaders import Progress, fresh_skipped
from femto.errors import DatasetError, TokenizerError
from femto.fileio import (
    fsync_directory, remove_stale_temporaries, temporary_prefix, write_atomic,
)  # fmt: skip
from femto.tokenizers.base import Tokenizer, get_tokenizer_class

logger = logging.getLogger(__name__)


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
    for begin in range(0, count, loaders.CHUNK_BYTES):
        check.update(tokens[begin : begin + loaders.CHUNK_BYTES])
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
    if isinstance(counts, dict) and set(fresh_skipped()) <= set(counts):
        corpus.skipped = counts
