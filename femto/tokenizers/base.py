"""The Tokenizer interface, the registry of tokenizers by name, and discovery of third-party ones.

A tokenizer is trained from a corpus, encodes text to ids and back, and saves itself into a run
directory so that sampling never rebuilds it from a corpus. Third-party packages register theirs under
the entry-point group `femto.tokenizers` (name = "module:Class").
"""

from __future__ import annotations

import abc
import pathlib
from collections.abc import Iterable

from femto.errors import TokenizerError

ENTRY_POINT_GROUP = "femto.tokenizers"


class Tokenizer(abc.ABC):
    """Lossless text <-> ids. Subclasses set `name` and implement every abstract method."""

    name: str = ""
    # the id standing for end-of-text (TinyStories' <|endoftext|>), or None when the vocabulary has none
    eot_id: int | None = None

    @classmethod
    @abc.abstractmethod
    def train(cls, texts: Iterable[str], vocab_size: int | None = None, **options) -> Tokenizer:
        """Build from a corpus (an iterable of text chunks); vocab_size None means the natural size."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Raise TokenizerError naming the character and its position for text it cannot represent."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @abc.abstractmethod
    def save(self, directory: pathlib.Path) -> dict:
        """Write the tokenizer's files into `directory` (atomically); return the JSON-able description
        (with "kind": self.name) that config.json stores and `load` receives back."""

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: pathlib.Path, description: dict) -> Tokenizer:
        """Rebuild from `save`'s files and description; a broken file raises TokenizerError."""


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
        raise TokenizerError(f"tokenizer {name!r} ({registry[name]}) cannot be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Tokenizer)):
        raise TokenizerError(f"tokenizer {name!r} ({registry[name]}) is not a femto Tokenizer subclass")
    return cls
