"""The byte tokenizer: the 256 values of UTF-8 bytes, so any text encodes without training.

It has no end-of-text symbol: TinyStories' <|endoftext|> stays the 13 bytes it is written with.
Decoding a byte sequence that is not valid UTF-8 (only a sampled model produces one) gives U+FFFD
for the bad bytes rather than failing halfway through a sample.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

from femto.errors import TokenizerError
from femto.tokenizers.base import Tokenizer

FORMAT_VERSION = 1


class ByteTokenizer(Tokenizer):
    """ids 0..255 are the bytes of the text's UTF-8 encoding."""

    name = "byte"

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int | None = None, eot: str | None = None, **options
    ) -> ByteTokenizer:
        """Nothing to learn: the corpus is not read. `eot` is accepted and left as plain bytes."""
        if options:
            raise TokenizerError(
                f"byte tokenizer takes no options, got {', '.join(sorted(options))}"
            )
        if vocab_size is not None and vocab_size != 256:
            raise TokenizerError(
                f"byte tokenizer vocabulary is always 256, not {vocab_size}: omit --vocab or pass 256"
            )
        return cls()

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(self.encode_buffer(text))

    def encode_buffer(self, text: str) -> memoryview:
        try:
            return memoryview(text.encode("utf-8"))
        except UnicodeEncodeError as exc:  # a lone surrogate, which no UTF-8 file can contain
            raise TokenizerError(
                f"character U+{ord(text[exc.start]):04X} at position {exc.start} is a lone "
                "surrogate and has no UTF-8 bytes"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        try:
            raw = bytes(ids)
        except (ValueError, TypeError):
            bad = next((i for i in ids if not (isinstance(i, int) and 0 <= i < 256)), None)
            raise TokenizerError(f"token id {bad!r} is not a byte (0..255)") from None
        return raw.decode("utf-8", errors="replace")

    def id_to_piece(self, token_id: int) -> str:
        return bytes([token_id]).decode("utf-8", errors="backslashreplace")

    def fingerprint(self) -> str:
        return f"byte-v{FORMAT_VERSION}"

    def save(self, directory: pathlib.Path) -> dict:
        # nothing to store beyond the description that save_tokenizer writes
        return {"kind": self.name, "version": FORMAT_VERSION, "vocab_size": 256}

    @classmethod
    def load(cls, directory: pathlib.Path, description: dict) -> ByteTokenizer:
        if description.get("version") != FORMAT_VERSION or description.get("vocab_size") != 256:
            raise TokenizerError(
                f"byte tokenizer description in {directory} is not format {FORMAT_VERSION} with "
                f"256 ids (found {description!r})"
            )
        return cls()
