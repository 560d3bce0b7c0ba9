"""Characters per token of femto's sentencepiece tokenizer against sentencepiece's own trainer at
the same total vocabulary size, on a corpus (default: the bundled TinyStories excerpt).

    python bench/sp_vocab.py                      # --vocab 500, prints a table
    python bench/sp_vocab.py --vocab 500 1000 --json sp_vocab.json

femto's --vocab N is the total size: <unk>, 256 byte-fallback pieces, the user symbols (newline,
end-of-text) and N - 259 learned pieces. spm.SentencePieceTrainer's defaults (nmt_nfkc
normalisation, a dummy prefix, no byte fallback, whitespace collapsed) learn N - 3 pieces beside
<unk>, <s>, </s>, but do not round-trip every text: the table says which do.
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from femto.data import resolve_corpus  # noqa: E402
from femto.tokenizers.sentencepiece import SentencePieceTokenizer  # noqa: E402


def measure(name: str, encode, decode, text: str, learned: int, seconds: float) -> dict:
    ids = encode(text)
    top = max(set(ids), key=ids.count) if ids else None
    return {
        "tokenizer": name,
        "learned_pieces": learned,
        "tokens": len(ids),
        "chars_per_token": len(text) / len(ids),
        "round_trip": decode(ids) == text,
        "top_piece_share": ids.count(top) / len(ids) if ids else 0.0,
        "train_s": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="tinystories")
    parser.add_argument("--vocab", type=int, nargs="+", default=[500])
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()

    import sentencepiece as spm

    corpus = resolve_corpus(args.data)
    text = "".join(corpus.texts())
    rows = []
    for vocab in args.vocab:
        start = time.perf_counter()
        femto_tok = SentencePieceTokenizer.train([text], vocab, eot=corpus.eot)
        seconds = time.perf_counter() - start
        learned = sum(
            1 for p, _ in femto_tok.piece_scores()
            if not (p.startswith("<0x") and len(p) == 6) and p not in ("<unk>", "\n", corpus.eot)
        )  # fmt: skip
        rows.append(
            measure(f"femto --vocab {vocab}", femto_tok.encode, femto_tok.decode, text, learned,
                    seconds)
        )  # fmt: skip
        lines = text.replace(corpus.eot or "\0", "").splitlines()
        model = io.BytesIO()
        spm.set_random_generator_seed(0)
        start = time.perf_counter()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab,
            minloglevel=2,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
        rows.append(
            measure(f"spm defaults vocab_size={vocab}", lambda t: sp.encode(t), sp.decode, text,
                    vocab - 3, seconds)
        )  # fmt: skip
    print(f"corpus {corpus.name!r}: {len(text):,} characters")
    print(
        f"{'tokenizer':<30} {'learned':>7} {'tokens':>10} {'chars/token':>11} {'top piece':>9}  "
        "round trip"
    )
    for r in rows:
        print(
            f"{r['tokenizer']:<30} {r['learned_pieces']:>7} {r['tokens']:>10,} "
            f"{r['chars_per_token']:>11.3f} {r['top_piece_share']:>9.1%}  {r['round_trip']}"
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
