"""Tokenizers as plugins: char, byte and sentencepiece built in, others through entry points."""

from femto.tokenizers.base import Tokenizer, available_tokenizers, get_tokenizer_class

__all__ = ["Tokenizer", "available_tokenizers", "get_tokenizer_class"]
