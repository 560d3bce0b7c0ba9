"""`femto export`: a run as a Hugging Face transformers GPT-2 folder."""

from __future__ import annotations

import pathlib

import click

from femto.cli import main, paths, user_errors


@main.command(name="export", short_help="Export a run as a Hugging Face transformers GPT-2 folder.")
@click.option("--out", default="out", show_default=True, help="Run directory to export.")
@click.option(
    "--hf", "hf_dir", required=True, metavar="DIR",
    help="Write a Hugging Face transformers GPT-2 folder (GPT2LMHeadModel + tokenizer.json) here; "
    "it must not exist yet or be empty.",
)  # fmt: skip
@paths.checkpoint_option
@user_errors
def export_command(out: str, hf_dir: str, checkpoint: str) -> None:
    """Export a run for Hugging Face transformers: load it with GPT2LMHeadModel.from_pretrained(DIR)
    or transformers.pipeline("text-generation", DIR)."""
    from femto.export_hf import export_hf

    config = export_hf(pathlib.Path(out), pathlib.Path(hf_dir), paths.run_checkpoint(out, checkpoint))
    click.echo(
        f"exported {out} ({checkpoint} checkpoint) to {hf_dir}: GPT-2 with n_layer "
        f"{config['n_layer']}, n_head {config['n_head']}, n_embd {config['n_embd']}, "
        f"n_positions {config['n_positions']}, vocab {config['vocab_size']}"
    )
    click.echo(
        f"use it: transformers.pipeline(\"text-generation\", \"{hf_dir}\") "
        "(pip install 'femto[hf]')"
    )
