"""`femto sample`: text from a trained run, streamed as it is generated."""

from __future__ import annotations

import pathlib
import sys

import click

from femto.cli import main, paths, user_errors


@main.command(short_help="Generate text from a trained run, streamed.")
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
@click.option(
    "--prompt-file", metavar="FILE", help="Continue the UTF-8 text of FILE (instead of --prompt)."
)
@paths.checkpoint_option
@click.option(
    "--allow-special", is_flag=True,
    help="Read the literal text <|endoftext|> in the prompt as the end-of-text token (by default "
    "it is ordinary text).",
)  # fmt: skip
@click.option(
    "--stop-at-eot", is_flag=True,
    help="End a sample at its first end-of-text token (by default it is shown as a blank line "
    "and sampling goes on).",
)  # fmt: skip
@user_errors
def sample(
    out: str, prompt: str, tokens: int, temperature: float, top_k: int, seed: int,
    num_samples: int, device: str, no_cache: bool, prompt_file: str | None, checkpoint: str,
    allow_special: bool, stop_at_eot: bool,
) -> None:  # fmt: skip
    """Generate text from a trained run, streamed as it is produced."""
    import numpy as np

    from femto.errors import ConfigError
    from femto.sample import (
        TextStream, check_sampling, encode_prompt, generate, load_run, show_text,
    )  # fmt: skip

    if num_samples < 1:
        raise ConfigError(f"--num-samples must be a positive integer, got {num_samples}")
    if top_k < 0:
        raise ConfigError(f"--top-k must be >= 0 (0 keeps every token), got {top_k}")
    check_sampling(temperature, top_k or None, tokens)
    if prompt_file is not None:
        if prompt:
            raise ConfigError("give --prompt or --prompt-file, not both")
        prompt = _read_prompt_file(prompt_file)
    loaded = load_run(paths.run_checkpoint(out, checkpoint), device)
    ids, notice = encode_prompt(
        loaded.tokenizer, prompt, loaded.model.config.block_size, allow_special
    )
    if notice:
        click.echo(f"notice: {notice}", err=True)
    eot_id = loaded.tokenizer.eot_id
    if stop_at_eot and eot_id is None:
        raise ConfigError(
            f"--stop-at-eot: the tokenizer of {out} has no end-of-text token (its corpus had no "
            "document breaks)"
        )
    stop_ids = (eot_id,) if stop_at_eot else ()
    rng = np.random.default_rng(seed)

    def write(text: str) -> None:
        click.echo(text, nl=False)
        sys.stdout.flush()

    for i in range(num_samples):
        if i:
            click.echo("\n" + "-" * 40)
        write(show_text(loaded.tokenizer, ids))
        stream = TextStream(loaded.tokenizer, write, ids)
        generate(
            loaded.model, ids, tokens, temperature, top_k or None, rng, stream, not no_cache,
            stop_ids,
        )  # fmt: skip
        stream.flush()
    click.echo()


def _read_prompt_file(path: str) -> str:
    """The prompt of --prompt-file: its bytes as UTF-8, exactly."""
    from femto.errors import ConfigError

    try:
        raw = pathlib.Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"--prompt-file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"--prompt-file {path} is a directory, not a text file") from None
    except OSError as exc:
        raise ConfigError(f"--prompt-file {path} cannot be read: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")  # bytes exactly: no newline translation
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--prompt-file {path} is not UTF-8 (byte {exc.start:,})") from None
