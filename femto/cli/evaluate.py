"""`femto eval`: cross-entropy and perplexity of a run on a corpus."""

from __future__ import annotations

import click

from femto.cli import main, paths, progress, user_errors


@main.command(name="eval", short_help="Cross-entropy and perplexity of a run on a corpus.")
@click.option("--out", default="out", show_default=True, help="Run directory of the model.")
@click.option("--data", help="Corpus name or path. [default: the run's training corpus]")
@click.option(
    "--split", type=click.Choice(["all", "train", "val"]), default="all", show_default=True,
    help="The whole corpus, or its first 90% / last 10% (the training run's split).",
)  # fmt: skip
@click.option("--batch-size", default=32, show_default=True, type=int, help="Windows per batch.")
@click.option("--device", default="cpu", show_default=True, help="cpu, opencl or opencl:P:D.")
@paths.checkpoint_option
@user_errors
def evaluate_command(
    out: str, data: str | None, split: str, batch_size: int, device: str, checkpoint: str
) -> None:
    """Mean cross-entropy (nats/token) and perplexity of a run's model on a corpus."""
    from femto.data import encode_corpus, resolve_corpus, train_val_split
    from femto.errors import ConfigError
    from femto.evaluate import evaluate, perplexity
    from femto.sample import load_run
    from femto.train import VAL_FRACTION

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size}")
    loaded = load_run(paths.run_checkpoint(out, checkpoint), device)
    cache_root = paths.cache_root()
    corpus = resolve_corpus(
        data or loaded.state.train.get("data", "shakespeare"), cache_root / "datasets"
    )
    bar = progress.encoding_progress(corpus.name)
    try:
        tokens = encode_corpus(corpus, loaded.tokenizer, cache_root / "tokens", bar)
    finally:
        bar.close()
    if corpus.summary():
        click.echo(f"notice: {corpus.summary()}", err=True)
    if split != "all":
        tokens = train_val_split(tokens, VAL_FRACTION)[0 if split == "train" else 1]
    what = f"corpus {corpus.name!r}" + ("" if split == "all" else f" ({split} split)")
    with progress.stderr_progress(f"evaluating on {corpus.name}", "windows") as bar:
        loss, positions = evaluate(loaded.model, tokens, batch_size, bar, what=what)
    click.echo(
        f"{what}: {loss:.4f} nats/token, perplexity {perplexity(loss):.3f} "
        f"({positions:,} positions in {positions // loaded.model.config.block_size:,} windows "
        f"of {loaded.model.config.block_size})"
    )
