"""`femto tokenize`: train a tokenizer, inspect it, and encode / decode with a run's."""

from __future__ import annotations

import pathlib
import sys

import click

from femto.cli import main, paths, progress, user_errors


@main.group(name="tokenize")
def tokenize_group() -> None:
    """Train, inspect and run tokenizers."""


def _run_tokenizer(out: str):
    """The tokenizer of the run (or tokenizer folder) in --out."""
    return paths.tokenizer_of(pathlib.Path(out))[0]


@tokenize_group.command(short_help="Print the token ids of a text.")
@click.option(
    "--out", default="out", show_default=True, help="Run directory whose tokenizer to use."
)
@click.option("--file", "file_", type=click.Path(dir_okay=False), help="Encode this UTF-8 file.")
@click.option(
    "--allow-special", is_flag=True,
    help="Encode the literal text <|endoftext|> as the end-of-text token (by default it is "
    "ordinary text).",
)  # fmt: skip
@click.argument("text", required=False)
@user_errors
def encode(out: str, file_: str | None, text: str | None, allow_special: bool) -> None:
    """Print the token ids of TEXT (or --file) with a run's tokenizer, space-separated."""
    from femto.errors import TokenizerError

    if (text is None) == (file_ is None):
        raise TokenizerError("give exactly one of TEXT or --file FILE to encode")
    if file_ is not None:
        try:  # bytes, decoded exactly: text mode would turn \r\n into \n
            text = pathlib.Path(file_).read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise TokenizerError(f"--file {file_} does not exist") from None
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"--file {file_} is not UTF-8 (byte {exc.start:,})") from None
        except OSError as exc:
            raise TokenizerError(f"--file {file_} cannot be read: {exc.strerror}") from None
    from femto.tokenizers.special import encode_text

    ids = encode_text(_run_tokenizer(out), text, allow_special)
    click.echo(" ".join(map(str, ids)))


@tokenize_group.command(short_help="Print the text of token ids.")
@click.option(
    "--out", default="out", show_default=True, help="Run directory whose tokenizer to use."
)
@click.option(
    "--output", "output", metavar="FILE",
    help="Write the text to FILE as UTF-8, byte for byte (nothing added).",
)  # fmt: skip
@click.argument("ids", nargs=-1, required=True)
@user_errors
def decode(out: str, output: str | None, ids: tuple[str, ...]) -> None:
    """Print the text of token IDS (integers, separated by spaces or commas) with a run's tokenizer.

    A newline is added only when stdout is a terminal: `decode ... > file` holds exactly the text.
    """
    from femto.errors import TokenizerError

    tokenizer = _run_tokenizer(out)
    values = []
    for word in " ".join(ids).replace(",", " ").split():
        try:
            value = int(word)
        except ValueError:
            raise TokenizerError(f"token id {word!r} is not an integer") from None
        if not 0 <= value < tokenizer.vocab_size:
            raise TokenizerError(
                f"token id {value} is outside the vocabulary: ids must be in [0, {tokenizer.vocab_size - 1}]"
            )
        values.append(value)
    _write_text(tokenizer.decode(values), output)


def _write_text(text: str, output: str | None) -> None:
    """Decoded text to --output (atomically, exact bytes) or to stdout (with a newline only on a
    terminal)."""
    from femto.errors import ConfigError
    from femto.fileio import write_atomic

    data = text.encode("utf-8", "surrogatepass")
    if output is None:
        newline = b"\n" if sys.stdout.isatty() else b""
        sys.stdout.flush()
        sys.stdout.buffer.write(data + newline)  # the bytes, not text-mode's newline translation
        sys.stdout.buffer.flush()
        return
    path = pathlib.Path(output)
    if path.is_dir():
        raise ConfigError(f"--output {path} is a directory: give a file name")
    if not path.parent.is_dir():
        raise ConfigError(f"--output {path}: directory {path.parent} does not exist")
    write_atomic(path, data)


def _visible(piece: str) -> str:
    """A piece with its whitespace visible: newline as \\n, tab as \\t, and so on."""
    return repr(piece)[1:-1] if piece.isprintable() is False or piece.strip() != piece else piece


@tokenize_group.command(name="train", short_help="Train a tokenizer on a corpus and save it.")
@click.option(
    "--tokenizer",
    "kind",
    default="char",
    show_default=True,
    help="Tokenizer by name: char, byte, sentencepiece or an installed plugin.",
)
@click.option(
    "--vocab", type=int,
    help="Vocabulary size (sentencepiece: required; the total, including 256 byte-fallback "
    "pieces, <unk>, the newline and (for corpora with document breaks) <|endoftext|>, so "
    "--vocab 500 learns 241 or 242 pieces).",
)  # fmt: skip
@click.option("--data", "spec", required=True, help="Corpus: a bundled name or a path.")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory to write the tokenizer into (tokenizer.json and its own files).",
)
@click.option(
    "--sp-model-type",
    type=click.Choice(["unigram", "bpe"]),
    help="sentencepiece algorithm. [default: unigram]",
)
@paths.data_home_option
@user_errors
def tokenize_train(
    kind: str, vocab: int | None, spec: str, out: str, sp_model_type: str | None,
    data_home: str | None,
) -> None:  # fmt: skip
    """Train a tokenizer on a corpus and save it into --out.

    Example: femto tokenize train --tokenizer sentencepiece --vocab 500 --data tinystories --out tok/
    """
    import time

    from femto.data import resolve_corpus, train_tokenizer
    from femto.errors import ConfigError
    from femto.tokenizers.folder import replace_tokenizer_folder

    out_dir = pathlib.Path(out)
    if (out_dir / "config.json").is_file():
        raise ConfigError(
            f"{out_dir} holds a training run: its tokenizer belongs to its model, so pick another --out"
        )
    options = {}
    if sp_model_type is not None:
        if kind != "sentencepiece":
            raise ConfigError(f"--sp-model-type applies to --tokenizer sentencepiece, not {kind!r}")
        options["model_type"] = sp_model_type
    corpus = resolve_corpus(spec, paths.data_home(data_home))
    start = time.perf_counter()
    reading = progress.stderr_progress(
        f"reading {corpus.name}", "B", then=f"training the {kind} tokenizer"
    )
    with reading as bar:
        tokenizer = train_tokenizer(corpus, kind, vocab, bar, **options)
    seconds = time.perf_counter() - start
    replace_tokenizer_folder(tokenizer, out_dir)  # as a whole: a kill leaves the old or the new
    if corpus.summary():
        click.echo(corpus.summary())
    eot = f", end-of-text id {tokenizer.eot_id}" if tokenizer.eot_id is not None else ""
    files = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
    click.echo(
        f"trained {kind} tokenizer ({options.get('model_type', 'unigram') + ', ' if kind == 'sentencepiece' else ''}"
        f"{tokenizer.vocab_size:,} symbols{eot}) on {corpus.name!r} "
        f"({corpus.size_bytes:,} bytes) in {seconds:.1f} s"
    )
    click.echo(f"saved to {out_dir}: {', '.join(files)}")
    click.echo(f"inspect it: femto tokenize stats --out {out_dir} --data {spec}")


@tokenize_group.command(name="stats", short_help="Characters per token, frequent pieces, round trip.")
@click.option(
    "--out",
    default="out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Run directory or `tokenize train` directory holding the tokenizer.",
)
@click.option("--data", "spec", help="Corpus to measure on. [default: the run's training corpus]")
@click.option(
    "--top",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="How many of the most frequent pieces to list.",
)
@paths.data_home_option
@user_errors
def tokenize_stats(out: str, spec: str | None, top: int, data_home: str | None) -> None:
    """Vocabulary size, characters and bytes per token, frequent pieces, and a round-trip check."""
    import numpy as np

    from femto.data import resolve_corpus
    from femto.errors import ConfigError

    tokenizer, run_data = paths.tokenizer_of(pathlib.Path(out))
    spec = spec or run_data
    if spec is None:
        raise ConfigError(f"pass --data: {out} does not record a training corpus")
    corpus = resolve_corpus(spec, paths.data_home(data_home))
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    chars = nbytes = chunks = 0
    mismatch: tuple[int, int] | None = None  # (chunk, first differing character)
    bar = progress.stderr_progress(f"encoding {corpus.name}", "B")
    try:
        for text, done in corpus.chunks():
            ids = tokenizer.encode(text)
            counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=tokenizer.vocab_size)
            back = tokenizer.decode(ids)
            if back != text and mismatch is None:
                first = next((i for i, (a, b) in enumerate(zip(back, text)) if a != b), None)
                mismatch = (
                    chunks,
                    chars + (first if first is not None else min(len(back), len(text))),
                )
            chars += len(text)
            nbytes += len(text.encode("utf-8", "surrogatepass"))
            chunks += 1
            bar(done, corpus.size_bytes)
    finally:
        bar.close()
    total = int(counts.sum())
    if total == 0:
        raise ConfigError(f"corpus {corpus.name!r} encodes to no tokens")
    used = int((counts > 0).sum())
    click.echo(
        f"tokenizer   {tokenizer.name}, {tokenizer.vocab_size:,} symbols "
        f"({used:,} used on this corpus)"
        + (f", end-of-text id {tokenizer.eot_id}" if tokenizer.eot_id is not None else "")
    )
    click.echo(
        f"corpus      {corpus.name}: {chars:,} characters, {nbytes:,} bytes -> {total:,} tokens"
    )
    click.echo(f"per token   {chars / total:.3f} characters, {nbytes / total:.3f} bytes")
    if corpus.summary():
        click.echo(f"reddit      {corpus.summary()}")
    if top:
        click.echo(f"most frequent pieces (of {total:,} tokens):")
        for rank, token_id in enumerate(np.argsort(-counts, kind="stable")[:top], 1):
            if counts[token_id] == 0:
                break
            piece = _visible(tokenizer.id_to_piece(int(token_id)))
            click.echo(
                f"  {rank:>3}. id {int(token_id):>6}  {counts[token_id] / total:7.2%}  "
                f"{int(counts[token_id]):>12,}  {piece}"
            )
    if mismatch is not None:
        raise click.ClickException(
            f"round trip FAILED: decode(encode(text)) differs from the corpus in chunk {mismatch[0]} "
            f"(first at character {mismatch[1]:,})"
        )
    click.echo(f"round trip  exact: decode(encode(text)) == text on all {chars:,} characters")
