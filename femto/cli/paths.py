"""Where the CLI finds things: the cache directory, downloaded corpora, a run's checkpoint, a
tokenizer folder; and the click options that choose them."""

from __future__ import annotations

import os
import pathlib

import click


def cache_root() -> pathlib.Path:
    """FEMTO_CACHE_DIR, else ~/.cache/femto: token caches and downloaded corpora live under it."""
    root = os.environ.get("FEMTO_CACHE_DIR")
    return pathlib.Path(root).expanduser() if root else pathlib.Path.home() / ".cache" / "femto"


def data_home(given: str | None) -> pathlib.Path:
    """--data-home, else the cache directory's datasets/."""
    return pathlib.Path(given).expanduser() if given else cache_root() / "datasets"


def tokenizer_of(directory: pathlib.Path):
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


def run_checkpoint(out: str, checkpoint: str) -> pathlib.Path:
    """The run directory of --checkpoint latest (the run itself) or best (its --keep-best copy)."""
    from femto.checkpoint import BEST_DIR, CONFIG_FILE
    from femto.errors import CheckpointError

    run_dir = pathlib.Path(out)
    if checkpoint == "latest":
        return run_dir
    best = run_dir / BEST_DIR
    if not (best / CONFIG_FILE).is_file() and (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"{run_dir} has no best checkpoint ({best} is missing): train it with --keep-best, "
            "or use --checkpoint latest"
        )
    return best


checkpoint_option = click.option(
    "--checkpoint",
    type=click.Choice(["latest", "best"]),
    default="latest",
    show_default=True,
    help="The run's last checkpoint, or the lowest-val-loss one that --keep-best kept in "
    "OUT/best/.",
)


data_home_option = click.option(
    "--data-home",
    type=click.Path(file_okay=False),
    help="Where downloaded corpora live. [default: $FEMTO_CACHE_DIR/datasets or ~/.cache/femto/datasets]",
)
