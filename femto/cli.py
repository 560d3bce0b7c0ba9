"""The command line: the only module that prints, reads the environment, or picks exit codes.

A FemtoError becomes one clean line and exit status 1; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import sys

import click

from femto.errors import FemtoError


def user_errors(func):
    """Turn a FemtoError (a user mistake, described) into click's one-line error and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except FemtoError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.group()
@click.version_option(package_name="femto")
def main() -> None:
    """femto: train and sample small GPT language models on C/OpenMP or OpenCL kernels."""


@main.group()
def tokenize() -> None:
    """Train, inspect and run tokenizers."""


@main.group()
def data() -> None:
    """List and fetch corpora."""


# ---- train / sample / eval / tokenize encode|decode (the GPT issue) ----


def _gpt_cache_root() -> pathlib.Path:
    """FEMTO_CACHE_DIR, else ~/.cache/femto: token caches and downloaded corpora live under it."""
    root = os.environ.get("FEMTO_CACHE_DIR")
    return pathlib.Path(root).expanduser() if root else pathlib.Path.home() / ".cache" / "femto"


def _gpt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _gpt_default(field_name: str) -> str:
    from femto.model import GPTConfig
    from femto.train import TrainConfig

    for cls in (GPTConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if f.name == field_name:
                return f"[default: {f.default}]"
    raise KeyError(field_name)


def _gpt_option(flag: str, field: str, text: str, **kwargs):
    """An option that defaults to None (so a resumed run can tell "not given") and shows the default."""
    return click.option(flag, help=f"{text} {_gpt_default(field)}", **kwargs)


def _gpt_encoding_progress(what: str):
    """A progress bar for encoding a corpus into the token cache (a cache hit reports nothing), on a
    terminal only: a log or a pipe would get a stray label line in front of the real output."""
    return _TokProgress(f"encoding {what}") if sys.stderr.isatty() else None


_GPT_MODEL_FIELDS = ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias")


@main.command()
@_gpt_option("--data", "data", "Corpus: a bundled name or a path.")
@_gpt_option("--tokenizer", "tokenizer", "Tokenizer by name (char, byte, ...).")
@click.option("--vocab", type=int, help="Vocabulary size for trainable tokenizers.")
@click.option(
    "--sp-model-type",
    type=click.Choice(["unigram", "bpe"]),
    help="sentencepiece's algorithm. [default: unigram]",
)
@click.option(
    "--out", default="out", show_default=True, help="Run directory (resumed if it holds a run)."
)
@_gpt_option("--device", "device", "cpu, opencl or opencl:P:D.")
@_gpt_option("--steps", "steps", "Total optimizer steps.", type=int)
@_gpt_option("--batch-size", "batch_size", "Sequences per micro-batch.", type=int)
@_gpt_option("--block-size", "block_size", "Context length T.", type=int)
@_gpt_option("--n-layer", "n_layer", "Transformer blocks.", type=int)
@_gpt_option("--n-head", "n_head", "Attention heads.", type=int)
@_gpt_option("--n-embd", "n_embd", "Embedding width C.", type=int)
@_gpt_option("--dropout", "dropout", "Dropout probability.", type=float)
@click.option(
    "--bias/--no-bias", default=None, help="Biases in linears and LayerNorms. [default: bias]"
)
@_gpt_option("--lr", "lr", "Peak learning rate.", type=float)
@_gpt_option("--min-lr", "min_lr", "Learning rate after cosine decay.", type=float)
@_gpt_option("--warmup", "warmup", "Linear warm-up steps.", type=int)
@_gpt_option("--grad-accum", "grad_accum", "Micro-batches per step.", type=int)
@_gpt_option("--weight-decay", "weight_decay", "AdamW decay on matrices.", type=float)
@_gpt_option("--eval-every", "eval_every", "Steps between val losses.", type=int)
@_gpt_option("--eval-batches", "eval_batches", "Batches per val loss.", type=int)
@_gpt_option("--save-every", "save_every", "Steps between checkpoints.", type=int)
@_gpt_option("--log-every", "log_every", "Steps between metrics lines.", type=int)
@_gpt_option("--sample-tokens", "sample_tokens", "Sample length at checkpoints.", type=int)
@_gpt_option("--seed", "seed", "Seed for init, batches and dropout.", type=int)
@user_errors
def train(out: str, **options) -> None:
    """Train a GPT, or resume the run in --out. Ctrl-C finishes the step, saves and exits."""
    import signal
    import threading

    import numpy as np

    from femto import train as training
    from femto.errors import TokenizerError
    from femto.sample import encode_prompt, generate

    model_options = {k: options.pop(k) for k in _GPT_MODEL_FIELDS}
    run_dir = pathlib.Path(out)
    cache_root = _gpt_cache_root()
    progress = _gpt_encoding_progress(options.get("data") or "the corpus")
    try:
        run = training.prepare_run(
            run_dir, model_options, options, cache_root / "tokens", cache_root / "datasets",
            progress,
        )  # fmt: skip
    finally:
        if progress is not None:
            progress.close()
    cfg, state = run.config, run.state
    if state.step >= cfg.steps:
        click.echo(
            f"{run_dir} is at step {state.step} of --steps {cfg.steps}: nothing to train "
            f"(pass a larger --steps to continue)"
        )
        return
    tty = sys.stdout.isatty()
    stop = threading.Event()
    try:
        prompt, _ = encode_prompt(run.tokenizer, "", state.model.block_size)
    except TokenizerError as exc:
        prompt = None  # a vocabulary without a newline: checkpoints then come without samples
        click.echo(f"notice: no samples at checkpoints ({exc})", err=True)

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, the last checkpoint stays
        stop.set()
        click.echo(
            "\ninterrupted: finishing this step and saving (Ctrl-C again to abort)", err=True
        )

    def on_event(event: dict) -> None:
        kind = event["kind"]
        if kind == "start":
            what = f"resuming at step {event['step']}" if event["resumed"] else "new run"
            click.echo(
                f"{what} in {run_dir}: {event['params'] / 1e6:.2f}M parameters, "
                f"vocab {state.model.vocab_size} ({run.tokenizer.name}), "
                f"{len(run.train_tokens):,} train / {len(run.val_tokens):,} val tokens, "
                f"on {event['device']}"
            )
        elif kind == "step":
            val = f"{event['val_loss']:.4f}" if event["val_loss"] is not None else "-"
            line = (
                f"step {event['step']}/{event['steps']} | loss {event['loss']:.4f} | val {val} | "
                f"{event['avg_tokens_per_s']:,.0f} tok/s | {_gpt_duration(event['elapsed_s'])} "
                f"elapsed | ETA {_gpt_duration(event['eta_s'])}"
            )
            if tty:
                click.echo("\r\033[K" + line, nl=False)
            elif event["step"] % cfg.log_every == 0 or event["step"] == event["steps"]:
                click.echo(line)
        elif kind == "checkpoint":
            prefix = "\n" if tty else ""
            if prompt is None or cfg.sample_tokens == 0:
                click.echo(f"{prefix}saved {run_dir} at step {event['step']}")
                return
            click.echo(f"{prefix}saved {run_dir} at step {event['step']}; sample:")
            rng = np.random.default_rng(cfg.seed)  # the same draws each time: samples compare
            new = generate(event["model"], prompt, cfg.sample_tokens, 0.8, 200, rng)
            click.echo(run.tokenizer.decode(new))
            click.echo("-" * 40)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        final = training.train(run, on_event, stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    best = f"{final.best_val_loss:.4f}" if final.best_val_loss is not None else "-"
    click.echo(f"done: step {final.step}, best val loss {best}, run in {run_dir}")


@main.command()
@click.option("--out", default="out", show_default=True, help="Run directory to sample from.")
@click.option("--prompt", default="", help="Text to continue (empty: start from a newline).")
@click.option("--tokens", default=500, show_default=True, type=int, help="New tokens per sample.")
@click.option("--temperature", default=0.8, show_default=True, type=float, help="0 is greedy.")
@click.option(
    "--top-k", default=200, show_default=True, type=int, help="Keep the K likeliest (0: all)."
)
@click.option("--seed", default=1337, show_default=True, type=int)
@click.option("--num-samples", default=1, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True, help="cpu, opencl or opencl:P:D.")
@click.option("--no-cache", is_flag=True, help="Recompute the whole context per token (slow).")
@user_errors
def sample(
    out: str, prompt: str, tokens: int, temperature: float, top_k: int, seed: int,
    num_samples: int, device: str, no_cache: bool,
) -> None:  # fmt: skip
    """Generate text from a trained run, streamed as it is produced."""
    import numpy as np

    from femto.errors import ConfigError
    from femto.sample import TextStream, check_sampling, encode_prompt, generate, load_run

    if num_samples < 1:
        raise ConfigError(f"--num-samples must be a positive integer, got {num_samples}")
    if top_k < 0:
        raise ConfigError(f"--top-k must be >= 0 (0 keeps every token), got {top_k}")
    check_sampling(temperature, top_k or None, tokens)
    loaded = load_run(pathlib.Path(out), device)
    ids, notice = encode_prompt(loaded.tokenizer, prompt, loaded.model.config.block_size)
    if notice:
        click.echo(f"notice: {notice}", err=True)
    rng = np.random.default_rng(seed)

    def write(text: str) -> None:
        click.echo(text, nl=False)
        sys.stdout.flush()

    for i in range(num_samples):
        if i:
            click.echo("\n" + "-" * 40)
        write(loaded.tokenizer.decode(ids))
        stream = TextStream(loaded.tokenizer, write, ids)
        generate(loaded.model, ids, tokens, temperature, top_k or None, rng, stream, not no_cache)
        stream.flush()
    click.echo()


@main.command(name="eval")
@click.option("--out", default="out", show_default=True, help="Run directory of the model.")
@click.option("--data", help="Corpus name or path. [default: the run's training corpus]")
@click.option(
    "--split", type=click.Choice(["all", "train", "val"]), default="all", show_default=True,
    help="The whole corpus, or its first 90% / last 10% (the training run's split).",
)  # fmt: skip
@click.option("--batch-size", default=32, show_default=True, type=int, help="Windows per batch.")
@click.option("--device", default="cpu", show_default=True, help="cpu, opencl or opencl:P:D.")
@user_errors
def evaluate_command(out: str, data: str | None, split: str, batch_size: int, device: str) -> None:
    """Mean cross-entropy (nats/token) and perplexity of a run's model on a corpus."""
    from femto.data import encode_corpus, resolve_corpus, train_val_split
    from femto.errors import ConfigError
    from femto.evaluate import evaluate, perplexity
    from femto.sample import load_run
    from femto.train import VAL_FRACTION

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size}")
    loaded = load_run(pathlib.Path(out), device)
    cache_root = _gpt_cache_root()
    corpus = resolve_corpus(
        data or loaded.state.train.get("data", "shakespeare"), cache_root / "datasets"
    )
    progress = _gpt_encoding_progress(corpus.name)
    try:
        tokens = encode_corpus(corpus, loaded.tokenizer, cache_root / "tokens", progress)
    finally:
        if progress is not None:
            progress.close()
    if split != "all":
        tokens = train_val_split(tokens, VAL_FRACTION)[0 if split == "train" else 1]
    what = f"corpus {corpus.name!r}" + ("" if split == "all" else f" ({split} split)")
    loss, positions = evaluate(loaded.model, tokens, batch_size, what=what)
    click.echo(
        f"{what}: {loss:.4f} nats/token, perplexity {perplexity(loss):.3f} "
        f"({positions:,} positions in {positions // loaded.model.config.block_size:,} windows "
        f"of {loaded.model.config.block_size})"
    )


def _gpt_run_tokenizer(out: str):
    return _tok_load(pathlib.Path(out))[0]


@tokenize.command()
@click.option(
    "--out", default="out", show_default=True, help="Run directory whose tokenizer to use."
)
@click.option("--file", "file_", type=click.Path(dir_okay=False), help="Encode this UTF-8 file.")
@click.argument("text", required=False)
@user_errors
def encode(out: str, file_: str | None, text: str | None) -> None:
    """Print the token ids of TEXT (or --file) with a run's tokenizer, space-separated."""
    from femto.errors import TokenizerError

    if (text is None) == (file_ is None):
        raise TokenizerError("give exactly one of TEXT or --file FILE to encode")
    if file_ is not None:
        try:
            text = pathlib.Path(file_).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TokenizerError(f"--file {file_} does not exist") from None
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"--file {file_} is not UTF-8 (byte {exc.start:,})") from None
    ids = _gpt_run_tokenizer(out).encode(text)
    click.echo(" ".join(map(str, ids)))


@tokenize.command()
@click.option(
    "--out", default="out", show_default=True, help="Run directory whose tokenizer to use."
)
@click.argument("ids", nargs=-1, required=True)
@user_errors
def decode(out: str, ids: tuple[str, ...]) -> None:
    """Print the text of token IDS (integers, separated by spaces or commas) with a run's tokenizer."""
    from femto.errors import TokenizerError

    tokenizer = _gpt_run_tokenizer(out)
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
    click.echo(tokenizer.decode(values))


# ---- tokenize train|stats, data list|fetch (the tokenizers issue) ----


class _TokProgress:
    """A click progress bar on stderr, opened on the first report (when the total is known)."""

    def __init__(self, label: str) -> None:
        self.label, self.bar, self.shown = label, None, 0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=max(total, 1), label=self.label, file=sys.stderr)
            self.bar.__enter__()
        self.bar.length = max(self.bar.length, total)
        self.bar.update(done - self.shown)
        self.shown = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _tok_data_home(data_home: str | None) -> pathlib.Path:
    return pathlib.Path(data_home).expanduser() if data_home else _gpt_cache_root() / "datasets"


def _tok_load(directory: pathlib.Path):
    """The tokenizer of a training run (config.json) or of `femto tokenize train --out` (tokenizer.json)."""
    from femto.tokenizers.base import DESCRIPTION_FILE, load_tokenizer

    if (directory / "config.json").is_file():
        from femto.sample import load_tokenizer_of

        tokenizer, state = load_tokenizer_of(directory)
        return tokenizer, state.train.get("data")
    if not (directory / DESCRIPTION_FILE).is_file():
        from femto.errors import TokenizerError

        raise TokenizerError(
            f"{directory} holds no tokenizer (no config.json or {DESCRIPTION_FILE}): create one with "
            "`femto tokenize train --data PATH --out DIR` or `femto train --out DIR`"
        )
    return load_tokenizer(directory), None


def _tok_show(piece: str) -> str:
    """A piece with its whitespace visible: newline as \\n, tab as \\t, and so on."""
    return repr(piece)[1:-1] if piece.isprintable() is False or piece.strip() != piece else piece


_data_home_option = click.option(
    "--data-home",
    type=click.Path(file_okay=False),
    help="Where downloaded corpora live. [default: $FEMTO_CACHE_DIR/datasets or ~/.cache/femto/datasets]",
)


@tokenize.command(name="train")
@click.option(
    "--tokenizer",
    "kind",
    default="char",
    show_default=True,
    help="Tokenizer by name: char, byte, sentencepiece or an installed plugin.",
)
@click.option("--vocab", type=int, help="Vocabulary size (sentencepiece: required).")
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
@_data_home_option
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
    from femto.tokenizers.base import save_tokenizer

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
    corpus = resolve_corpus(spec, _tok_data_home(data_home))
    start = time.perf_counter()
    tokenizer = train_tokenizer(corpus, kind, vocab, **options)
    seconds = time.perf_counter() - start
    save_tokenizer(tokenizer, out_dir)
    skipped = corpus.skipped  # malformed lines were also logged as a warning while reading
    if skipped["malformed"] or skipped["deleted"]:
        click.echo(
            f"skipped {skipped['malformed']:,} malformed line(s); dropped {skipped['deleted']:,} "
            "deleted or removed comment(s)"
        )
    eot = f", end-of-text id {tokenizer.eot_id}" if tokenizer.eot_id is not None else ""
    files = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
    click.echo(
        f"trained {kind} tokenizer ({options.get('model_type', 'unigram') + ', ' if kind == 'sentencepiece' else ''}"
        f"{tokenizer.vocab_size:,} symbols{eot}) on {corpus.name!r} "
        f"({corpus.size_bytes:,} bytes) in {seconds:.1f} s"
    )
    click.echo(f"saved to {out_dir}: {', '.join(files)}")
    click.echo(f"inspect it: femto tokenize stats --out {out_dir} --data {spec}")


@tokenize.command(name="stats")
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
@_data_home_option
@user_errors
def tokenize_stats(out: str, spec: str | None, top: int, data_home: str | None) -> None:
    """Vocabulary size, characters and bytes per token, frequent pieces, and a round-trip check."""
    import numpy as np

    from femto.data import resolve_corpus
    from femto.errors import ConfigError

    tokenizer, run_data = _tok_load(pathlib.Path(out))
    spec = spec or run_data
    if spec is None:
        raise ConfigError(f"pass --data: {out} does not record a training corpus")
    corpus = resolve_corpus(spec, _tok_data_home(data_home))
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    chars = nbytes = chunks = 0
    mismatch: tuple[int, int] | None = None  # (chunk, first differing character)
    progress = _TokProgress(f"encoding {corpus.name}")
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
            progress(done, corpus.size_bytes)
    finally:
        progress.close()
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
    if corpus.skipped["malformed"]:
        click.echo(f"skipped     {corpus.skipped['malformed']:,} malformed line(s)")
    if top:
        click.echo(f"most frequent pieces (of {total:,} tokens):")
        for rank, token_id in enumerate(np.argsort(-counts, kind="stable")[:top], 1):
            if counts[token_id] == 0:
                break
            piece = _tok_show(tokenizer.id_to_piece(int(token_id)))
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


@data.command(name="list")
@_data_home_option
@user_errors
def data_list(data_home: str | None) -> None:
    """Show the corpora femto knows by name, which are present, and their sizes."""
    from femto.data import CATALOGUE, FETCH_ALIASES, corpus_path

    home = _tok_data_home(data_home)
    click.echo(f"  {'name':<17} {'status':<15} {'size':>13}  description")
    for name, info in CATALOGUE.items():
        path = corpus_path(info, home)
        if path.is_file():
            status = "bundled" if info.url is None else "downloaded"
            size = f"{path.stat().st_size:,} B"
        else:
            status = "missing" if info.url is None else "not downloaded"
            size = f"{info.size:,} B" if info.size else "-"
        click.echo(f"  {name:<17} {status:<15} {size:>13}  {info.description}")
        if path.is_file():
            click.echo(f"  {'':<17} {path}")
    for alias, target in FETCH_ALIASES.items():
        click.echo(f"`femto data fetch {alias}` downloads {target} into {home}")
    click.echo(
        "--data also takes a path: a UTF-8 text file, a folder of them, or a Reddit comment dump "
        "(.jsonl / .ndjson / RC_YYYY-MM.zst)"
    )


@data.command(name="fetch")
@click.argument("name")
@click.option("--url", help="Download from this address (a mirror) instead of the catalogue's.")
@click.option("--sha256", help="Expected sha256 of the file, when the server publishes none.")
@_data_home_option
@user_errors
def data_fetch(name: str, url: str | None, sha256: str | None, data_home: str | None) -> None:
    """Download a corpus (e.g. `tinystories`, the full training file): resumable, sha256-checked."""
    from femto.data import CATALOGUE, FETCH_ALIASES, corpus_path, fetch_corpus

    home = _tok_data_home(data_home)
    resolved = FETCH_ALIASES.get(name, name)
    info = CATALOGUE.get(resolved)
    if info is not None and info.url is not None and corpus_path(info, home).is_file():
        click.echo(f"{resolved} is already downloaded: {corpus_path(info, home)}")
        return
    progress = _TokProgress(f"downloading {resolved}")
    try:
        path = fetch_corpus(name, home, url=url, sha256=sha256, progress=progress)
    finally:
        progress.close()
    click.echo(f"downloaded {path} ({path.stat().st_size:,} bytes, sha256 verified)")
    click.echo(f"use it with: femto train --data {resolved}")


# ---- devices (the OpenCL issue) ----


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the device list as JSON.")
@click.option(
    "--tune",
    is_flag=True,
    help="Time the matmul tile shapes on the default device (or --device) now and cache the choice.",
)
@click.option("--device", "tune_device", default=None, help="opencl:P:D to tune (with --tune).")
@click.option("--force", is_flag=True, help="With --tune: tune again even if a choice is cached.")
@user_errors
def devices(as_json: bool, tune: bool, tune_device: str | None, force: bool) -> None:
    """List OpenCL platforms and devices, for --device opencl:P:D.

    The device marked * is what plain --device opencl picks: the first GPU, else the first CPU
    driver; a simulator (SIM, e.g. Oclgrind) only when there is nothing else.
    """
    import json

    from femto.backend import opencl  # lazily: pyopencl loads only for this command

    rows = opencl.list_devices()
    default = opencl.default_device(rows)
    if as_json:
        click.echo(json.dumps([{**r, "default": r is default} for r in rows], indent=2))
        return
    if not rows:
        raise click.ClickException(
            f"OpenCL platforms exist but none has a device: {opencl.INSTALL_HINT}"
        )
    header = f"  {'device':<12} {'type':<5} {'memory':>9} {'units':>5}  name (platform, version)"
    click.echo(header)
    for r in rows:
        mark = "*" if r is default else " "
        spec = f"opencl:{r['platform']}:{r['device']}"
        click.echo(
            f"{mark} {spec:<12} {r['type']:<5} {_gib(r['memory_bytes']):>9} {r['compute_units']:>5}  "
            f"{r['name']} ({r['platform_name']}, {r['version']})"
        )
    if tune:
        _tune(opencl, tune_device, force)


def _tune(opencl, spec: str | None, force: bool) -> None:
    if spec is not None and spec != "opencl" and not spec.startswith("opencl:"):
        raise click.BadParameter(f"{spec!r}: --tune needs an OpenCL device, opencl or opencl:P:D")
    device = spec.split(":", 1)[1] if spec and ":" in spec else None
    backend = opencl.OpenCLBackend(device=device, tune=False)
    click.echo(f"\nmatmul tile shapes for {backend.device_name} (cache: {opencl.cache_dir()}):")
    click.echo(f"  {'class':<6} {'shape M x N x K':<18} {'TILE x TK x WPT':<16} {'ms':>8} {'GFLOP/s':>8}")
    for klass, r in opencl.tune_matmul(backend, force=force).items():
        M, N, K = r.get("shape", [0, 0, 0])
        tile = "x".join(map(str, r["params"]))
        if r.get("ms"):
            timing = f"{r['ms']:>8.3f} {2 * M * N * K / r['ms'] / 1e6:>8.0f}"
        else:
            timing = f"{'-':>8} {'-':>8}"
        note = " (cached; --force to re-tune)" if r.get("cached") else ""
        click.echo(f"  {klass:<6} {f'{M} x {N} x {K}':<18} {tile:<16} {timing}{note}")
        for name, why in sorted((r.get("rejected") or {}).items()):
            click.echo(f"         rejected {name}: {why}")
