"""Shared helpers of the crafted-file, size, atomic-unit, round-trip, fuzz and kill tests (part B).

A tiny corpus and run, the CLI through click's runner, one-line error checks, and a pid that is
certainly dead (for temporaries whose writer was killed).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from click.testing import CliRunner

from femto.cli import main
from femto.data import bundled_root

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = [
    "--steps", "2", "--batch-size", "2", "--block-size", "8", "--n-layer", "1", "--n-head", "2",
    "--n-embd", "8", "--eval-every", "2", "--eval-batches", "1", "--save-every", "2",
    "--log-every", "1", "--warmup", "1", "--sample-tokens", "0",
]  # fmt: skip


def write_corpus(path: pathlib.Path, chars: int = 8_000) -> pathlib.Path:
    text = (bundled_root() / "shakespeare" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    path.write_text(text[:chars], encoding="utf-8")
    return path


def invoke(args, cache: pathlib.Path, **kwargs):
    env = {"FEMTO_CACHE_DIR": str(cache)}
    return CliRunner().invoke(main, [str(a) for a in args], env=env, **kwargs)


def train_tiny(root: pathlib.Path, name: str = "run") -> pathlib.Path:
    """A 2-step run of a 1-layer, 8-wide model on 8,000 characters of Shakespeare."""
    corpus = root / "corpus.txt"
    if not corpus.exists():
        write_corpus(corpus)
    run = root / name
    result = invoke(["train", "--data", corpus, "--out", run, *TINY], root / "cache")
    assert result.exit_code == 0, result.output
    return run


def assert_one_line_error(result, *fragments: str) -> str:
    """A non-zero exit with exactly one line, `Error: ...`, holding every fragment; no traceback."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"a traceback instead of a message: {result.exception!r}"
    )
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def subprocess_env(cache: pathlib.Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "FEMTO_CACHE_DIR": str(cache)}
