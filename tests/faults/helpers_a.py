"""Shared pieces of the fault tests of training and saving: a tiny corpus and run, `femto` in a
subprocess (for signals, locks, kills and resource limits), and the checks a surviving run passes.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
from click.testing import CliRunner

from femto import checkpoint as ckpt
from femto.cli import main
from femto.data import bundled_root
from femto.evaluate import evaluate
from femto.sample import load_run

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = [
    "--batch-size", "4", "--block-size", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
    "--eval-every", "1000", "--eval-batches", "1", "--log-every", "1", "--warmup", "1",
    "--sample-tokens", "0",
]  # fmt: skip
# a child that must keep training until it is stopped: far more steps than any test waits for
FOREVER = ["--steps", "1000000"]


def make_workdir(root: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """(corpus path, environment) for runs under `root`: a 20 kB corpus and a private cache."""
    text = (bundled_root() / "shakespeare" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    corpus = root / "corpus.txt"
    corpus.write_text(text[:20_000], encoding="utf-8")
    env = {"FEMTO_CACHE_DIR": str(root / "cache")}
    return corpus, env


def invoke(args, env):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def train_run(run: pathlib.Path, corpus: pathlib.Path, env: dict, steps: int) -> pathlib.Path:
    result = invoke(["train", "--data", corpus, "--out", run, *TINY, "--steps", steps], env)
    assert result.exit_code == 0, result.output
    return run


def child_env(env: dict) -> dict:
    """The environment of a femto child process: this checkout importable, one OpenMP thread (the
    tests run beside each other on small machines)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, **env, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def femto_child(args, env: dict, prelude: str = "", **popen) -> subprocess.Popen:
    """`femto ARGS` in a child process, stdout and stderr piped (text). `prelude` is Python run
    before the CLI starts (a test's instrumentation: patches that stall or kill at some point)."""
    code = f"{prelude}\nfrom femto.cli import main\nmain()\n"
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def wait_for_line(proc: subprocess.Popen, fragment: str, timeout: float = 60.0) -> list[str]:
    """Read the child's stdout until a line holds `fragment`; the lines read so far."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if fragment in line:
            return lines
    proc.kill()
    raise AssertionError(
        f"no line with {fragment!r} from the child; stdout {lines[-5:]}, "
        f"stderr {proc.stderr.read()}"
    )


def wait_for_file(path: pathlib.Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.01)


def copy_run(run: pathlib.Path, to: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(run, to))


def checkpoint_bytes(run: pathlib.Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in ckpt.CHECKPOINT_FILES}


def run_loss(run: pathlib.Path, corpus_tokens: np.ndarray) -> float:
    """The model's mean loss on fixed tokens (the check that a checkpoint still is what it was)."""
    loaded = load_run(run)
    loss, _ = evaluate(loaded.model, corpus_tokens, 8)
    return loss


def assert_run_whole(run: pathlib.Path, clean: bool = True) -> ckpt.RunState:
    """A run a fault left behind must load, with whole metrics lines, and (clean: after an error
    femto handled, not a kill) none of its partial files."""
    loaded = load_run(run)  # config, tokenizer and weights agree (steps, shapes)
    state = loaded.state
    ckpt.load_optimizer_state(run, state)
    leftovers = [p.name for p in run.iterdir() if p.name.endswith((".pending", ".tmp"))]
    assert not clean or not leftovers, leftovers
    metrics = run / ckpt.METRICS_FILE
    if metrics.exists():
        data = metrics.read_bytes()
        assert not data or data.endswith(b"\n"), data[-80:]
        for line in data.splitlines():
            json.loads(line)
    return state


def one_line(stderr: str) -> str:
    """The single line of a clean error (click prints 'Error: ...'); fails on a traceback."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr[-2000:]
    return lines[0]
