"""The command line: the only package that prints, reads the environment, or picks exit codes.

A FemtoError becomes one clean line and exit status 1; any other exception is a bug and keeps its
traceback. `main` is the `femto` group; each command group lives in its own module below, which
registers itself on `main` when imported at the end of this file.
"""

from __future__ import annotations

import errno
import functools

import click

from femto.errors import FemtoError

_WRITE_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
}  # fmt: skip


def user_errors(func):
    """Turn a FemtoError (a user mistake, described) into click's one-line error and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except FemtoError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            # a full, read-only or failing disk is the machine's state, not a bug: one line
            if exc.errno not in _WRITE_ERRNOS:
                raise
            from femto.fileio import write_failed

            raise click.ClickException(str(write_failed(exc.filename or "a file", exc))) from None

    return wrapper


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """--version: femto's version and the CPU kernel path this machine runs (or why FEMTO_CPU can't)."""
    if not value or ctx.resilient_parsing:
        return
    from femto import __version__
    from femto.backend import cpu

    error = cpu.cpu_path_error()
    if error is not None:
        raise click.ClickException(error)
    click.echo(f"femto {__version__}; CPU: {cpu.cpu_summary()}")
    ctx.exit()


@click.group(invoke_without_command=True)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and the CPU kernel path, then exit.",
)
@click.pass_context
def main(ctx: click.Context) -> None:
    """femto: train and sample small GPT language models on C/OpenMP or OpenCL kernels."""
    from femto.backend import cpu

    error = cpu.cpu_path_error()  # a bad FEMTO_CPU stops every command before it does any work
    if error is not None:
        raise click.ClickException(error)
    if ctx.invoked_subcommand is None:  # `femto` alone: the help, as a success
        click.echo(ctx.get_help())



# the command modules register their commands on `main`: imported last, once `main` exists
from femto.cli import (  # noqa: E402, F401
    data, devices, evaluate, export, plot, sample, tokenize, train,
)  # fmt: skip
