"""Corpora, the token cache and (x, y) batches.

A corpus is a bundled name (`datasets/` in a checkout, `femto/datasets` in a wheel), a downloaded one,
or any UTF-8 text file, TinyStories file, Reddit comment dump (NDJSON, plain or .zst) or folder of them.
It is read as a stream of text chunks, encoded once into a uint16/uint32 token file cached by content,
and served as random (B, T) windows. Nothing here prints: progress goes to a callback.

One job per module: catalogue (the corpora known by name), loaders (text and TinyStories files),
reddit (comment dumps), corpora (a corpus from a name or path), download (fetching one),
token_cache (training a tokenizer on a corpus and the cached token file), batches (windows).
This package re-exports the names the rest of femto uses.
"""

from femto.data.batches import (
    check_windows, eval_windows, get_batch, micro_batch_rng, train_val_split,
)  # fmt: skip
from femto.data.catalogue import (
    CATALOGUE, FETCH_ALIASES, CorpusInfo, bundled_root, corpus_path, default_data_home,
)  # fmt: skip
from femto.data.corpora import Corpus, resolve_corpus
from femto.data.download import fetch_corpus
from femto.data.loaders import Progress
from femto.data.token_cache import (
    encode_corpus, open_token_cache, token_dtype, train_tokenizer,
)  # fmt: skip

__all__ = [
    "CATALOGUE", "FETCH_ALIASES", "Corpus", "CorpusInfo", "Progress", "bundled_root",
    "check_windows", "corpus_path", "default_data_home", "encode_corpus", "eval_windows",
    "fetch_corpus", "get_batch", "micro_batch_rng", "open_token_cache", "resolve_corpus",
    "token_dtype", "train_tokenizer", "train_val_split",
]  # fmt: skip
