"""Special tokens only when asked: text that contains the end-of-text marker literally (a prompt, a
file to encode) encodes it as ordinary text unless the caller allows special tokens. Corpora are
not affected: their loaders place the marker between documents on purpose.
"""

from __future__ import annotations

from femto.tokenizers.base import Tokenizer


def encode_text(tokenizer: Tokenizer, text: str, allow_special: bool = False) -> list[int]:
    """tokenizer.encode(text), except that without allow_special the literal end-of-text marker
    becomes the ids of its characters rather than the end-of-text id."""
    marker = getattr(tokenizer, "eot", None)
    if allow_special or tokenizer.eot_id is None or not marker or marker not in text:
        return list(tokenizer.encode(text))
    # encode the marker in two halves: neither is the marker, so neither matches the special symbol
    half = len(marker) // 2
    ids: list[int] = []
    parts = text.split(marker)
    for i, part in enumerate(parts):
        if part:
            ids += tokenizer.encode(part)
        if i < len(parts) - 1:
            ids += tokenizer.encode(marker[:half])
            ids += tokenizer.encode(marker[half:])
    return ids
