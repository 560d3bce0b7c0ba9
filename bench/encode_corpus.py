"""Benchmark: encoding a generated ~500 MB corpus into the token cache streams it in chunks.

Writes a TinyStories-like corpus (the bundled excerpt's stories, shuffled, with a counter) into a
temporary directory, then, for each tokenizer, runs `encode_corpus` in a fresh child process and
reports that process's peak RSS and the encoding throughput in MB/s of corpus text. Run:

    python bench/encode_corpus.py [--mb 500] [--tokenizers char,byte,sentencepiece]

It does not measure tokenizer quality; `femto tokenize stats` does that.
"""

# Measured once (this 2-core shared Xeon VM, 2026-11-25), `python bench/encode_corpus.py`, 500 MB:
#   char (84 ids)             encode 19.9 s = 25.1 MB/s, peak RSS  66 MB (49 MB after imports)
#   byte (256 ids)            encode 15.9 s = 31.5 MB/s, peak RSS  58 MB
#   sentencepiece (1000 ids)  encode 61.8 s =  8.1 MB/s, peak RSS  88 MB
# Re-opening the cached token file (content hash included) takes about 1 s.

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def generate(path: pathlib.Path, megabytes: int, seed: int = 0) -> int:
    """Write about `megabytes` MB of stories separated by <|endoftext|> lines, a few MB at a time."""
    from femto.data import resolve_corpus
    from femto.tokenizers.base import EOT_MARKER

    stories = "".join(resolve_corpus("tinystories").texts()).split(EOT_MARKER)[:-1]
    rng = np.random.default_rng(seed)
    target = megabytes * 1_000_000
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        n = 0
        while written < target:
            block = []
            for k in rng.permutation(len(stories))[:500]:
                n += 1
                block.append(f"Story {n}. {stories[k]}\n{EOT_MARKER}\n")
            text = "".join(block)
            f.write(text)
            written += len(text.encode("utf-8"))
    return written


def encode_child(corpus_path: str, tokenizer_name: str, cache_dir: str, vocab: int | None) -> dict:
    """Runs in the child: train (char: a full pass; sentencepiece: on the bundled excerpt) and
    encode; returns timings and the child's own peak RSS."""
    from femto.data import encode_corpus, resolve_corpus, train_tokenizer

    corpus = resolve_corpus(corpus_path)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    source = corpus if tokenizer_name != "sentencepiece" else resolve_corpus("tinystories")
    tokenizer = train_tokenizer(source, tokenizer_name, vocab)
    trained = time.perf_counter()
    corpus.fingerprint()
    hashed = time.perf_counter()
    tokens = encode_corpus(corpus, tokenizer, pathlib.Path(cache_dir))
    encoded = time.perf_counter()
    again = encode_corpus(resolve_corpus(corpus_path), tokenizer, pathlib.Path(cache_dir))
    cached = time.perf_counter()
    assert np.array_equal(tokens[:1000], again[:1000]) and len(tokens) == len(again)
    return {
        "tokenizer": tokenizer_name,
        "vocab_size": tokenizer.vocab_size,
        "tokens": len(tokens),
        "dtype": str(tokens.dtype),
        "train_s": trained - start,
        "hash_s": hashed - trained,
        "encode_s": encoded - hashed,
        "cache_hit_s": cached - encoded,
        "rss_before_mb": rss_start / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="corpus size in MB")
    parser.add_argument("--tokenizers", default="char,byte,sentencepiece")
    parser.add_argument("--vocab", type=int, default=1000, help="sentencepiece vocabulary")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, name, cache, vocab = args.child
        print(json.dumps(encode_child(path, name, cache, int(vocab) if vocab != "-" else None)))
        return

    with tempfile.TemporaryDirectory(prefix="femto-bench-") as tmp:
        corpus = pathlib.Path(tmp) / "stories.txt"
        start = time.perf_counter()
        size = generate(corpus, args.mb)
        print(f"generated {size / 1e6:,.0f} MB corpus in {time.perf_counter() - start:.1f} s")
        for name in args.tokenizers.split(","):
            vocab = str(args.vocab) if name == "sentencepiece" else "-"
            cache = pathlib.Path(tmp) / f"cache-{name}"
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(corpus), name, str(cache), vocab],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{name:>13}: vocab {r['vocab_size']:>5}, {r['tokens']:>11,} {r['dtype']} tokens | "
                f"train {r['train_s']:6.1f} s | hash {r['hash_s']:4.1f} s | "
                f"encode {r['encode_s']:6.1f} s = {size / 1e6 / r['encode_s']:5.1f} MB/s | "
                f"cache hit {r['cache_hit_s']:4.1f} s | peak RSS {r['peak_rss_mb']:6.0f} MB "
                f"(after imports {r['rss_before_mb']:.0f} MB)"
            )


if __name__ == "__main__":
    main()
