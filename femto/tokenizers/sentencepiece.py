"""The sentencepiece tokenizer: unigram (default) or BPE pieces trained by femto on the corpus.

Trained offline through the sentencepiece package with its log silenced, identity normalisation,
whitespace kept as is, the newline (and the end-of-text marker, if the corpus has one) as its own
piece, and byte fallback for characters unseen in training, so every text round-trips exactly.
It does not wrap a pretrained model: the `.model` file femto trains is stored in the run directory.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import re
from collections.abc import Iterable, Iterator

from femto.errors import TokenizerError
from femto.fileio import write_atomic
from femto.tokenizers.base import Tokenizer, check_file, read_tokenizer_file

MODEL_FILE = "tokenizer.model"
MODEL_TYPES = ("unigram", "bpe")
# sentencepiece writes spaces as U+2581 inside pieces and turns every U+2581 back into a space when
# decoding, so a literal U+2581 in the text is encoded through its three UTF-8 byte pieces instead
SPACE_MARK = "\u2581"
# training skips sentences (lines) longer than max_sentence_length bytes: cut longer lines first
TRAIN_LINE_CHARS = 4096
SPECIAL_PIECES = 1 + 256  # <unk> and the 256 byte-fallback pieces
# encode long texts as a batch of newline-ended pieces on all cores; the newline is a user-defined
# symbol, so no piece spans it and the split does not change the ids
ENCODE_PIECE_CHARS = 1 << 16


def _sentences(texts: Iterable[str]) -> Iterator[str]:
    """Training sentences: the corpus's lines, each keeping its newline, long lines cut."""
    for chunk in texts:
        lines = chunk.split("\n")
        last = lines.pop()
        for line in lines:
            line += "\n"
            for start in range(0, len(line), TRAIN_LINE_CHARS):
                yield line[start : start + TRAIN_LINE_CHARS]
        for start in range(0, len(last), TRAIN_LINE_CHARS):
            yield last[start : start + TRAIN_LINE_CHARS]


def _translate_training_error(
    exc: Exception, vocab_size: int, model_type: str, n_user: int
) -> TokenizerError:
    """sentencepiece's vocabulary-size failures, as one line saying which sizes work."""
    message = str(exc)
    high = re.search(
        r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message
    )
    if high:
        limit = int(high.group(2))
        return TokenizerError(
            f"--vocab {vocab_size} is too large for this corpus: sentencepiece {model_type} can make "
            f"at most {limit:,} pieces from it; use --vocab {limit} or less (or a larger corpus)"
        )
    low = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", message)
    if low:
        need = int(low.group(2))
        chars = need - SPECIAL_PIECES - n_user
        return TokenizerError(
            f"--vocab {vocab_size} is too small for this corpus: sentencepiece needs at least {need} "
            f"pieces (256 byte-fallback pieces, <unk>, {n_user} user symbol(s) and the corpus's "
            f"{chars} common characters); use --vocab {need} or more"
        )
    detail = re.sub(r"^.*?\] ", "", message.strip().splitlines()[-1] if message.strip() else "")
    return TokenizerError(f"sentencepiece could not train on this corpus: {detail or message}")


class SentencePieceTokenizer(Tokenizer):
    """A trained sentencepiece model (its serialized bytes) plus the end-of-text marker, if any."""

    name = "sentencepiece"

    def __init__(self, model_proto: bytes, eot: str | None = None, source: str = "model") -> None:
        import sentencepiece as spm

        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError, TypeError) as exc:
            raise TokenizerError(f"{source} is not a sentencepiece model: {exc}") from None
        byte_ids = [processor.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
        unk = processor.unk_id()
        if any(i == unk or not processor.is_byte(i) for i in byte_ids):
            raise TokenizerError(
                f"{source} was trained without byte fallback, so it cannot encode every text; "
                "retrain it with `femto tokenize train --tokenizer sentencepiece`"
            )
        self.model_proto = bytes(model_proto)
        self.eot = eot
        self.eot_id = None
        if eot is not None:
            self.eot_id = processor.piece_to_id(eot)
            if self.eot_id == unk or processor.id_to_piece(self.eot_id) != eot:
                raise TokenizerError(f"{source} has no piece for its end-of-text marker {eot!r}")
        self._sp = processor
        self._space_mark_ids = [byte_ids[b] for b in SPACE_MARK.encode("utf-8")]
        self._threads = os.cpu_count() or 1

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int | None = None,
        eot: str | None = None,
        model_type: str = "unigram",
        character_coverage: float = 0.9995,
        max_sentences: int = 2_000_000,
        seed: int = 0,
        **options,
    ) -> SentencePieceTokenizer:
        """Train on the corpus's lines (at most `max_sentences`, sampled evenly by sentencepiece).

        Characters outside the `character_coverage` share of the corpus are left to byte fallback,
        which keeps rare symbols from taking pieces of a small vocabulary.
        """
        import sentencepiece as spm

        if options:
            raise TokenizerError(
                f"sentencepiece tokenizer has no option {', '.join(sorted(options))} "
                "(it takes model_type, character_coverage, max_sentences, seed)"
            )
        if vocab_size is None:
            raise TokenizerError(
                "the sentencepiece tokenizer needs a vocabulary size: pass --vocab N "
                "(the smallest workable is about 300, as 257 pieces are bytes and <unk>)"
            )
        if model_type not in MODEL_TYPES:
            raise TokenizerError(
                f"sentencepiece model type {model_type!r} is not supported: use one of "
                f"{', '.join(MODEL_TYPES)}"
            )
        if vocab_size < 1:
            raise TokenizerError(f"--vocab must be positive, got {vocab_size}")
        user_symbols = ["\n"] + ([eot] if eot is not None else [])
        sentences = _sentences(texts)
        first = next(sentences, None)
        if first is None:
            raise TokenizerError("cannot train the sentencepiece tokenizer on an empty corpus")

        def all_sentences() -> Iterator[str]:
            yield first
            yield from sentences

        # sentencepiece samples and shuffles sentences with a library-wide generator: seed it so the
        # same corpus always gives the same model
        spm.set_random_generator_seed(seed)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=all_sentences(),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                allow_whitespace_only_pieces=True,
                byte_fallback=True,
                user_defined_symbols=user_symbols,
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                max_sentence_length=4 * TRAIN_LINE_CHARS + 16,
                input_sentence_size=max_sentences,
                shuffle_input_sentence=True,
                num_threads=os.cpu_count() or 1,
                minloglevel=3,
            )
        except RuntimeError as exc:
            raise _translate_training_error(
                exc, vocab_size, model_type, len(user_symbols)
            ) from None
        return cls(model.getvalue(), eot)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        if SPACE_MARK in text:
            ids: list[int] = []
            for k, part in enumerate(text.split(SPACE_MARK)):
                if k:
                    ids.extend(self._space_mark_ids)
                ids.extend(self._encode_plain(part))
            return ids
        return self._encode_plain(text)

    def _encode_plain(self, text: str) -> list[int]:
        if len(text) <= ENCODE_PIECE_CHARS:
            return self._sp.encode(text)
        pieces, start = [], 0
        while start < len(text):
            cut = text.find("\n", start + ENCODE_PIECE_CHARS) + 1 or len(text)
            pieces.append(text[start:cut])
            start = cut
        ids: list[int] = []
        for part in self._sp.encode(pieces, num_threads=self._threads):
            ids.extend(part)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        size = self.vocab_size
        bad = next((i for i in ids if not (isinstance(i, int) and 0 <= i < size)), None)
        if bad is not None:
            raise TokenizerError(
                f"token id {bad!r} is outside the sentencepiece vocabulary (0..{size - 1})"
            )
        return self._sp.decode(ids)

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.model_proto)
        digest.update(f"\0{self.eot}".encode())
        return digest.hexdigest()

    def save(self, directory: pathlib.Path) -> dict:
        write_atomic(pathlib.Path(directory) / MODEL_FILE, self.model_proto)
        return {
            "kind": self.name,
            "file": MODEL_FILE,
            "sha256": hashlib.sha256(self.model_proto).hexdigest(),
            "vocab_size": self.vocab_size,
            "eot": self.eot,
            "eot_id": self.eot_id,
        }

    @classmethod
    def load(cls, directory: pathlib.Path, description: dict) -> SentencePieceTokenizer:
        path = check_file(directory, description, "sentencepiece")
        eot = description.get("eot")
        if eot is not None and not isinstance(eot, str):
            raise TokenizerError(f"tokenizer description for {path} is corrupt: eot {eot!r}")
        tokenizer = cls(read_tokenizer_file(path), eot, source=str(path))
        expected = description.get("vocab_size")
        if expected is not None and expected != tokenizer.vocab_size:
            raise TokenizerError(
                f"{path} holds {tokenizer.vocab_size} pieces but the run expects {expected}"
            )
        return tokenizer

    # ---- for exporters (femto export --hf) ----

    def piece_scores(self) -> list[tuple[str, float]]:
        """Every piece and its score, by id: unigram log-probabilities, or BPE merge priorities."""
        return [(self._sp.id_to_piece(i), self._sp.get_score(i)) for i in range(self.vocab_size)]

    @property
    def model_type(self) -> str:
        """unigram or bpe, read from the model's TrainerSpec (no protobuf package needed)."""
        spec = _proto_field(self.model_proto, 2, 2)  # ModelProto.trainer_spec
        kind = _proto_field(spec, 3, 0) if spec is not None else None  # TrainerSpec.model_type
        return {1: "unigram", 2: "bpe", 3: "word", 4: "char"}.get(kind, "unigram")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _proto_field(data: bytes, number: int, wire: int):
    """The first field `number` of a protobuf message: bytes (wire type 2) or an int (type 0)."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field_number, field_wire = key >> 3, key & 7
        if field_wire == 0:
            value, pos = _varint(data, pos)
        elif field_wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif field_wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        elif field_wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        else:
            return None
        if field_number == number and field_wire == wire:
            return value
    return None
