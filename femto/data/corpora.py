"""A corpus: a bundled name, a downloaded one, or any UTF-8 text file, TinyStories file, Reddit
comment dump or folder of them, read as one stream of text chunks."""

from __future__ import annotations

import hashlib
import pathlib
import re
from collections.abc import Iterator, Sequence

from femto.data import loaders
from femto.data.catalogue import CATALOGUE, corpus_path
from femto.data.reddit import read_reddit
from femto.errors import DatasetError
from femto.tokenizers.base import EOT_MARKER

# bump when a loader changes the text it produces, so old token caches are not reused
LOADER_VERSION = 1


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
        self.skipped = loaders.fresh_skipped()
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
        self.skipped = loaders.fresh_skipped()
        readers = {
            "text": loaders.read_text, "tinystories": loaders.read_tinystories, "reddit": read_reddit,
        }  # fmt: skip
        done = 0
        last = ""
        for path, kind in self.files:
            new_file = True
            for text, consumed in readers[kind](path, self.skipped):
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
                    while block := f.read(4 * loaders.CHUNK_BYTES):
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
