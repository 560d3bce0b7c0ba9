"""The character tokenizer: one id per distinct character of the training corpus, in sorted order.

With an end-of-text marker (TinyStories' <|endoftext|>) the marker gets one extra id after the
characters. Text holding a character outside the vocabulary is an error naming it and its position;
nothing is silently dropped or replaced.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
import sys
from collections.abc import Iterable, Sequence

from femto.errors import TokenizerError
from femto.fileio import write_atomic
from femto.tokenizers.base import Tokenizer, check_file, read_json_file

FILE_NAME = "vocab.json"
FORMAT_VERSION = 1
# ids are written as code points and read back as native 32-bit integers
_UTF32 = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"


def _char_repr(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X})"


class CharTokenizer(Tokenizer):
    """Vocabulary: the sorted unique characters of the corpus, plus the end-of-text marker if any."""

    name = "char"

    def __init__(self, chars: Sequence[str], eot: str | None = None) -> None:
        chars = list(chars)
        if not chars:
            raise TokenizerError("char tokenizer needs at least one character in its vocabulary")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise TokenizerError(f"char tokenizer vocabulary holds non-characters: {bad[:5]!r}")
        if chars != sorted(set(chars)):
            raise TokenizerError("char tokenizer vocabulary must be sorted unique characters")
        self.chars = chars
        self.eot = eot
        self.eot_id = len(chars) if eot is not None else None
        self._itos = chars + ([eot] if eot is not None else [])
        # str.translate maps every known character to the character whose code point is its id,
        # so one C-level pass plus a UTF-32 view turns a whole chunk into ids
        self._to_ids = {ord(c): i for i, c in enumerate(chars)}
        self._unknown = re.compile("[^" + "".join(re.escape(c) for c in chars) + "]")

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int | None = None, eot: str | None = None, **options
    ) -> CharTokenizer:
        """Collect the corpus's characters; `eot` (if given and present in the corpus) gets its own id."""
        if options:
            raise TokenizerError(
                f"char tokenizer takes no options, got {', '.join(sorted(options))}"
            )
        seen: set[str] = set()
        has_eot = False
        for chunk in texts:
            if eot is not None and eot in chunk:
                has_eot = True
                chunk = chunk.replace(eot, "")
            seen.update(chunk)
        if not seen:
            raise TokenizerError("cannot train the char tokenizer on an empty corpus")
        tokenizer = cls(sorted(seen), eot if has_eot else None)
        if vocab_size is not None and vocab_size != tokenizer.vocab_size:
            raise TokenizerError(
                f"char tokenizer vocabulary size is fixed by the corpus: it has "
                f"{tokenizer.vocab_size} symbols, not {vocab_size}; "
                f"omit --vocab or pass --vocab {tokenizer.vocab_size}"
            )
        return tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    def encode(self, text: str) -> list[int]:
        return self.encode_buffer(text).tolist()

    def encode_buffer(self, text: str) -> memoryview:
        """The ids as a memoryview of native unsigned 32-bit ints."""
        if self.eot is not None and self.eot in text:
            # the marker becomes the character whose code point is eot_id, after checking the rest
            parts = text.split(self.eot)
            offset = 0
            for part in parts:
                self._check(part, offset)
                offset += len(part) + len(self.eot)
            mapped = chr(self.eot_id).join(part.translate(self._to_ids) for part in parts)
        else:
            self._check(text, 0)
            mapped = text.translate(self._to_ids)
        return memoryview(mapped.encode(_UTF32, "surrogatepass")).cast("I")

    def _check(self, text: str, offset: int) -> None:
        match = self._unknown.search(text)
        if match is not None:
            raise TokenizerError(
                f"character {_char_repr(match.group())} at position {offset + match.start()} is not "
                f"in the char tokenizer's vocabulary ({len(self.chars)} characters from its training "
                "corpus); retrain on text that has it, or use --tokenizer byte or sentencepiece"
            )

    def decode(self, ids: Iterable[int]) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if ids and (min(ids) < 0 or max(ids) >= len(self._itos)):
            bad = next(i for i in ids if not 0 <= i < len(self._itos))
            raise TokenizerError(
                f"token id {bad} is outside the char vocabulary (0..{len(self._itos) - 1})"
            )
        return "".join(map(self._itos.__getitem__, ids))

    def id_to_piece(self, token_id: int) -> str:
        return self._itos[token_id]

    def fingerprint(self) -> str:
        return hashlib.sha256(
            json.dumps({"kind": self.name, "chars": self.chars, "eot": self.eot}).encode()
        ).hexdigest()

    def save(self, directory: pathlib.Path) -> dict:
        payload = {
            "kind": self.name,
            "version": FORMAT_VERSION,
            "chars": self.chars,
            "eot": self.eot,
        }
        raw = json.dumps(payload, ensure_ascii=True, indent=1).encode("utf-8")
        write_atomic(pathlib.Path(directory) / FILE_NAME, raw)
        return {
            "kind": self.name,
            "file": FILE_NAME,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
        }

    @classmethod
    def load(cls, directory: pathlib.Path, description: dict) -> CharTokenizer:
        path = check_file(directory, description, "char")
        payload = read_json_file(path)
        if payload.get("kind") != cls.name or payload.get("version") != FORMAT_VERSION:
            raise TokenizerError(
                f"{path} is not a char tokenizer file of format {FORMAT_VERSION} "
                f"(kind={payload.get('kind')!r}, version={payload.get('version')!r})"
            )
        chars, eot = payload.get("chars"), payload.get("eot")
        if not isinstance(chars, list) or not (eot is None or isinstance(eot, str)):
            raise TokenizerError(f'{path} is corrupt: "chars" must be a list and "eot" a string')
        try:
            tokenizer = cls(chars, eot)
        except TokenizerError as exc:
            raise TokenizerError(f"{path} is corrupt: {exc}") from None
        expected = description.get("vocab_size")
        if expected is not None and expected != tokenizer.vocab_size:
            raise TokenizerError(
                f"{path} holds {tokenizer.vocab_size} symbols but the run expects {expected}"
            )
        return tokenizer
