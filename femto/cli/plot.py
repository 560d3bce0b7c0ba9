"""`femto plot`: runs' metrics on one chart, in the terminal or a file."""

from __future__ import annotations

import pathlib
import sys

import click

from femto.cli import main, user_errors


@main.command(short_help="Chart runs' losses (terminal, or a file with --save).")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--y", "metrics", multiple=True,
    type=click.Choice(["loss", "train", "val", "lr", "tokens_per_s", "grad_norm"]),
    help="What to draw (repeat for more): loss = each logged step's training loss, train / val = "
    "the evaluations' losses, lr, tokens_per_s, grad_norm. [default: loss and val]",
)  # fmt: skip
@click.option(
    "--x", "x", type=click.Choice(["step", "tokens"]), default="step", show_default=True,
    help="Horizontal axis: optimizer steps or tokens trained on.",
)  # fmt: skip
@click.option(
    "--save", type=click.Path(dir_okay=False),
    help="Write the chart to FILE (.png, .svg or .pdf; needs matplotlib: pip install "
    "'femto[plot]') instead of drawing it in the terminal.",
)  # fmt: skip
@user_errors
def plot(runs: tuple[str, ...], metrics: tuple[str, ...], x: str, save: str | None) -> None:
    """Draw the metrics of one or more runs (their metrics.jsonl) on one chart.

    \b
    Examples:
      femto plot runs/a runs/b
      femto plot runs/a --y val --y train --y lr --x tokens --save curves.png
    """
    import shutil

    from femto.plot import save_chart, terminal_chart
    from femto.runlog import load_run_log

    logs = [load_run_log(pathlib.Path(run)) for run in runs]
    chosen = list(dict.fromkeys(metrics)) or ["loss", "val"]
    if save is not None:
        save_chart(logs, chosen, pathlib.Path(save), x)
        click.echo(f"wrote {save}")
        return
    size = shutil.get_terminal_size((100, 30))
    tty = sys.stdout.isatty()
    click.echo(
        terminal_chart(logs, chosen, x, size.columns, max(size.lines - 3, 12), color=tty),
        color=tty,
    )
