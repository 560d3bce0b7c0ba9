"""The command line: the only module that prints, reads the environment, or picks exit codes.

A FemtoError becomes one clean line and exit status 1; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import functools

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

# ---- tokenize train|stats, data list|fetch (the tokenizers issue) ----

# ---- devices (the OpenCL issue) ----
