"""The Tokenizer interface, the registry of tokenizers by name, and discovery of third-party ones.

A tokenizer is trained from a corpus, encodes text to ids and back, and saves itself into a run
directory so that sampling never rebuilds it from a corpus. Third-party packages register theirs under
the entry-point group `femto.tokenizers` (name = "module:Class").
"""

from __future__ import annotations

import abc
import hashlib
import json
import pathlib
import tempfile
from collections.abc import Iterable, Sequence

from femto.errors import TokenizerError
from femto.fileio import write_atomic
from femto.safe_read import MAX_JSON_BYTES, loads_json, read_bytes

# a tokenizer's own file (a sentencepiece model of a million pieces is about 20 MB)
MAX_TOKENIZER_FILE_BYTES = 256 << 20

ENTRY_POINT_GROUP = "femto.tokenizers"
# TinyStories' story separator; a tokenizer with an end-of-text symbol encodes it as one id
EOT_MARKER = "<|endoftext|>"
# save_tokenizer writes a tokenizer's description here, so a directory alone is enough to load it
DESCRIPTION_FILE = "tokenizer.json"


class Tokenizer(abc.ABC):
    """Lossless text <-> ids. Subclasses set `name` and implement every abstract method."""

    name: str = ""
    # the id standing for end-of-text (TinyStories' <|endoftext|>), or None when the vocabulary has none
    eot_id: int | None = None

    @classmethod
    @abc.abstractmethod
    def train(cls, texts: Iterable[str], vocab_size: int | None = None, **options) -> Tokenizer:
        """Build from a corpus (an iterable of text chunks); vocab_size None means the natural size.

        The option `eot` (a string such as EOT_MARKER, or None) is the corpus's end-of-text marker;
        a tokenizer that has an end-of-text symbol encodes the marker as `eot_id`.
        """

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Raise TokenizerError naming the character and its position for text it cannot represent."""

    def encode_buffer(self, text: str) -> Sequence[int]:
        """`encode(text)` as any sequence of ints that numpy reads without a Python loop (a
        memoryview of integers, or a list). The token cache calls this; override it to skip
        building a list of Python ints."""
        return self.encode(text)

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    def id_to_piece(self, token_id: int) -> str:
        """The text one id stands for, for display (`femto tokenize stats`)."""
        return self.decode([token_id])

    @abc.abstractmethod
    def save(self, directory: pathlib.Path) -> dict:
        """Write the tokenizer's own files into `directory` (atomically, see write_atomic); return the
        JSON-able description (with "kind": self.name) that `load` receives back. Use
        `save_tokenizer`, which also stores that description as tokenizer.json."""

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: pathlib.Path, description: dict) -> Tokenizer:
        """Rebuild from `save`'s files and description; a broken file raises TokenizerError."""

    def fingerprint(self) -> str:
        """A content hash: equal for tokenizers that encode every text the same way.

        The token cache is keyed by it. This default hashes what `save` writes; built-in tokenizers
        override it with something cheaper.
        """
        digest = hashlib.sha256(self.name.encode())
        with tempfile.TemporaryDirectory(prefix="femto-tok-") as tmp:
            description = self.save(pathlib.Path(tmp))
            digest.update(json.dumps(description, sort_keys=True).encode())
            for path in sorted(pathlib.Path(tmp).rglob("*")):
                if path.is_file():
                    digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()


def read_json_file(path: pathlib.Path) -> dict:
    """A tokenizer's JSON file as a dict; missing or unreadable is a TokenizerError naming the file."""
    path = pathlib.Path(path)
    try:
        raw = read_bytes(path, TokenizerError, path.parent, MAX_JSON_BYTES)
    except FileNotFoundError:
        raise TokenizerError(
            f"{path} is missing: tokenizer files are written by `femto train` "
            "or `femto tokenize train --out DIR`"
        ) from None
    value = loads_json(raw, str(path), TokenizerError)
    if not isinstance(value, dict):
        raise TokenizerError(
            f"{path} is corrupt: expected a JSON object, found {type(value).__name__}"
        )
    return value


def read_tokenizer_file(path: pathlib.Path) -> bytes:
    """A tokenizer file's bytes: a regular file inside its folder, of bounded size."""
    path = pathlib.Path(path)
    try:
        return read_bytes(path, TokenizerError, path.parent, MAX_TOKENIZER_FILE_BYTES)
    except FileNotFoundError:
        raise TokenizerError(
            f"{path} is missing: tokenizer files are written by `femto train` "
            "or `femto tokenize train --out DIR`"
        ) from None


def file_sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(read_tokenizer_file(path)).hexdigest()


def check_file(directory: pathlib.Path, description: dict, kind: str) -> pathlib.Path:
    """The tokenizer file a description names, checked against the sha256 it records."""
    name = description.get("file")
    if not isinstance(name, str) or pathlib.Path(name).name != name:
        raise TokenizerError(f'{directory / DESCRIPTION_FILE} is corrupt: bad "file" {name!r}')
    path = pathlib.Path(directory) / name
    if not path.exists():
        raise TokenizerError(
            f"{path} is missing: the {kind} tokenizer file is written by `femto train` "
            "or `femto tokenize train --out DIR`"
        )
    expected = description.get("sha256")
    if expected is not None and file_sha256(path) != expected:
        raise TokenizerError(
            f"{path} is corrupt: its sha256 differs from the one recorded when it was saved "
            "(truncated or edited?); retrain it with `femto tokenize train`"
        )
    return path


def save_tokenizer(tokenizer: Tokenizer, directory: pathlib.Path) -> dict:
    """Save the tokenizer's files and its description (tokenizer.json) into `directory`."""
    directory = pathlib.Path(directory)
    description = tokenizer.save(directory)
    if description.get("kind") != tokenizer.name:
        raise TokenizerError(
            f"tokenizer {tokenizer.name!r} saved a description of kind {description.get('kind')!r}"
        )
    text = json.dumps(description, indent=1, sort_keys=True) + "\n"
    write_atomic(directory / DESCRIPTION_FILE, text.encode("utf-8"))
    return description


def load_tokenizer(directory: pathlib.Path, description: dict | None = None) -> Tokenizer:
    """Rebuild the tokenizer saved in `directory`; its description comes from tokenizer.json unless
    given (a checkpoint may keep its own copy in config.json)."""
    directory = pathlib.Path(directory)
    if description is None:
        description = read_json_file(directory / DESCRIPTION_FILE)
    kind = description.get("kind") if isinstance(description, dict) else None
    if not isinstance(kind, str):
        raise TokenizerError(
            f'{directory / DESCRIPTION_FILE} is corrupt: no string "kind" (found {description!r})'
        )
    return get_tokenizer_class(kind).load(directory, description)


_BUILTIN = {
    "char": "femto.tokenizers.char:CharTokenizer",
    "byte": "femto.tokenizers.byte:ByteTokenizer",
    "sentencepiece": "femto.tokenizers.sentencepiece:SentencePieceTokenizer",
}


def available_tokenizers() -> dict[str, str]:
    """name -> "module:Class" for the built-in tokenizers and every installed plugin."""
    from importlib.metadata import entry_points

    found = dict(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def get_tokenizer_class(name: str) -> type[Tokenizer]:
    import importlib

    registry = available_tokenizers()
    if name not in registry:
        raise TokenizerError(
            f"unknown tokenizer {name!r}: available are {', '.join(sorted(registry))} "
            f"(plugins register under the entry-point group {ENTRY_POINT_GROUP!r})"
        )
    module_name, _, class_name = registry[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise TokenizerError(
            f"tokenizer {name!r} ({registry[name]}) cannot be loaded: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Tokenizer)):
        raise TokenizerError(
            f"tokenizer {name!r} ({registry[name]}) is not a femto Tokenizer subclass"
        )
    return cls
