"""`femto data`: the corpora femto knows, and downloading them."""

from __future__ import annotations

import click

from femto.cli import main, paths, progress, user_errors


@main.group(name="data", short_help="List and fetch corpora.")
def data_group() -> None:
    """List and fetch corpora."""


@data_group.command(name="list", short_help="The corpora femto knows, and which are present.")
@paths.data_home_option
@user_errors
def data_list(data_home: str | None) -> None:
    """Show the corpora femto knows by name, which are present, and their sizes."""
    from femto.data import CATALOGUE, FETCH_ALIASES, corpus_path

    home = paths.data_home(data_home)
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


@data_group.command(name="fetch", short_help="Download a corpus (resumable, sha256-checked).")
@click.argument("name")
@click.option("--url", help="Download from this address (a mirror) instead of the catalogue's.")
@click.option("--sha256", help="Expected sha256 of the file, when the server publishes none.")
@paths.data_home_option
@user_errors
def data_fetch(name: str, url: str | None, sha256: str | None, data_home: str | None) -> None:
    """Download a corpus (e.g. `tinystories`, the full training file): resumable, sha256-checked."""
    from femto.data import CATALOGUE, FETCH_ALIASES, corpus_path, fetch_corpus

    home = paths.data_home(data_home)
    resolved = FETCH_ALIASES.get(name, name)
    info = CATALOGUE.get(resolved)
    if info is not None and info.url is not None and corpus_path(info, home).is_file():
        click.echo(f"{resolved} is already downloaded: {corpus_path(info, home)}")
        return
    bar = progress.stderr_progress(f"downloading {resolved}", "B")
    try:
        path = fetch_corpus(name, home, url=url, sha256=sha256, progress=bar)
    finally:
        bar.close()
    click.echo(f"downloaded {path} ({path.stat().st_size:,} bytes, sha256 verified)")
    click.echo(f"use it with: femto train --data {resolved}")
