"""kill -9 at random instants of tokenizer training (into a folder that holds another tokenizer)
and of token-cache building: afterwards the folder loads as the old tokenizer or the new one, the
cache is whole or absent, and the next start removes what the killed writer left.

The instants are drawn from a seeded generator over the length of an uninterrupted run, so every
run of the suite kills at the same fractions of the work.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from femto.data import encode_corpus, open_token_cache, resolve_corpus, token_dtype, train_tokenizer
from femto.tokenizers.base import load_tokenizer, save_tokenizer
from tests.faults.helpers_b import REPO, subprocess_env, write_corpus

KILLS = 8  # per test; with the training and saving kills the suite passes 20


def kill_at(args: list[str], seconds: float, env: dict) -> bool:
    """Run `args`, SIGKILL it after `seconds`; True when the kill landed before it finished."""
    child = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(seconds)
    landed = child.poll() is None
    if landed:
        os.kill(child.pid, signal.SIGKILL)
    child.wait()
    return landed


def timed(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(args, env=env, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
    return write_corpus(tmp_path_factory.mktemp("kill") / "corpus.txt", 60_000)


@pytest.fixture(scope="module")
def big_corpus(corpus) -> pathlib.Path:
    path = corpus.with_name("big.txt")
    path.write_text(corpus.read_text() * 60)  # 3.6 MB: a cache build lasts long enough to be cut
    return path


def hidden_entries(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_kill_during_tokenizer_training_leaves_old_or_new(corpus, tmp_path):
    out = tmp_path / "tok"
    save_tokenizer(train_tokenizer(resolve_corpus(str(corpus)), "char"), out)
    env = subprocess_env(tmp_path / "cache")
    args = [sys.executable, "-m", "femto", "tokenize", "train", "--tokenizer", "sentencepiece",
            "--vocab", "400", "--data", str(corpus), "--out"]  # fmt: skip
    whole = timed([*args, str(tmp_path / "probe")], env)
    rng = np.random.default_rng(11)
    kinds, landed = set(), 0
    for instant in rng.uniform(0.1, 1.0, KILLS) * whole:
        landed += kill_at([*args, str(out)], instant, env)
        tokenizer = load_tokenizer(out)  # never a mix of the two
        kinds.add(tokenizer.name)
        files = sorted(p.name for p in out.iterdir())
        expected = {"char": ["tokenizer.json", "vocab.json"],
                    "sentencepiece": ["tokenizer.json", "tokenizer.model"]}  # fmt: skip
        assert files == expected[tokenizer.name]
        if tokenizer.name == "sentencepiece":  # a finished run: start again from the old one
            shutil.rmtree(out)
            save_tokenizer(train_tokenizer(resolve_corpus(str(corpus)), "char"), out)
    assert landed >= KILLS // 2, f"only {landed} of {KILLS} kills landed before the end"
    assert "char" in kinds
    subprocess.run([*args, str(out)], env=env, cwd=REPO, check=True, capture_output=True)
    assert load_tokenizer(out).name == "sentencepiece"
    assert hidden_entries(tmp_path) == []  # the killed writers' halves are gone


SWAP_KILL = """
import os, sys
from femto.tokenizers import folder
from femto.tokenizers.char import CharTokenizer
exchange = folder._exchange
def dying(a, b):
    if sys.argv[1] == "after":
        exchange(a, b)
    os._exit(9)
folder._exchange = dying
folder.replace_tokenizer_folder(CharTokenizer(list("\\nxyz")), sys.argv[2])
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_kill_at_the_swap(tmp_path, when):
    out = tmp_path / "tok"
    save_tokenizer(load_tokenizer_like("\nabcd"), out)
    code = subprocess.run([sys.executable, "-c", SWAP_KILL, when, str(out)],
                          env=subprocess_env(tmp_path / "cache"), cwd=REPO).returncode  # fmt: skip
    assert code == 9
    assert load_tokenizer(out).vocab_size == (4 if when == "after" else 5)
    assert len(hidden_entries(tmp_path)) == 1  # the other half, left by the dead writer
    from femto.tokenizers.folder import replace_tokenizer_folder

    replace_tokenizer_folder(load_tokenizer_like("\nq"), out)
    assert load_tokenizer(out).vocab_size == 2 and hidden_entries(tmp_path) == []


def load_tokenizer_like(chars: str):
    from femto.tokenizers.char import CharTokenizer

    return CharTokenizer(sorted(chars))


CACHE_BUILD = """
import sys, pathlib, time
from femto.data import encode_corpus, resolve_corpus, train_tokenizer
corpus = resolve_corpus(sys.argv[1])
tokenizer = train_tokenizer(corpus, "char")
print("ready", flush=True)
start = time.perf_counter()
encode_corpus(corpus, tokenizer, pathlib.Path(sys.argv[2]))
print(time.perf_counter() - start, flush=True)
"""


def build_cache(args: list[str], env: dict, kill_after: float | None) -> float | None:
    """Start a cache build; once its imports are done, SIGKILL it after `kill_after` seconds of
    building (None: let it finish and return how long the build took)."""
    child = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    if kill_after is None:
        seconds = float(child.stdout.readline())
        child.wait()
        return seconds
    time.sleep(kill_after)
    landed = child.poll() is None
    if landed:
        os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    return landed


def test_kill_during_cache_building_leaves_a_whole_cache_or_none(big_corpus, tmp_path):
    parsed = resolve_corpus(str(big_corpus))
    tokenizer = train_tokenizer(parsed, "char")
    expected = np.asarray(tokenizer.encode(big_corpus.read_text()), dtype=np.uint16)
    cache = tmp_path / "tokens"
    cache.mkdir()
    env = subprocess_env(tmp_path / "cache")
    args = [sys.executable, "-c", CACHE_BUILD, str(big_corpus)]
    whole = build_cache([*args, str(tmp_path / "probe")], env, None)
    rng = np.random.default_rng(12)
    landed = partial = 0
    for instant in rng.uniform(0.0, 1.0, KILLS) * whole:
        landed += build_cache([*args, str(cache)], env, instant)
        partial += bool(hidden_entries(cache))
        finished = [p for p in cache.glob("*") if not p.name.startswith(".")]
        for path in finished:  # a published cache is always whole
            assert np.array_equal(open_token_cache(path, token_dtype(tokenizer.vocab_size),
                                                   tokenizer.vocab_size), expected)  # fmt: skip
            path.unlink()  # so the next kill lands in a build again
    assert landed >= KILLS // 2, f"only {landed} of {KILLS} kills landed before the end"
    assert partial, "no kill landed while a partial cache file was being written"
    tokens = encode_corpus(parsed, tokenizer, cache)  # the next start: stale partial files go
    assert np.array_equal(tokens, expected)
    assert hidden_entries(cache) == []


MOVED_ASIDE_KILL = """
import os, sys
from femto.tokenizers import folder
from femto.tokenizers.char import CharTokenizer
folder._exchange = lambda a, b: False
rename = os.rename
def dying(a, b):
    rename(a, b)
    if str(a).endswith("tok"):  # the old folder is moved aside, the new one not yet in place
        os._exit(9)
os.rename = dying
folder.replace_tokenizer_folder(CharTokenizer(list("\\nxyz")), sys.argv[1])
"""


def test_kill_while_the_old_folder_is_moved_aside(tmp_path):
    """Where the filesystem cannot exchange two folders in one rename."""
    out = tmp_path / "tok"
    save_tokenizer(load_tokenizer_like("\nabcd"), out)
    code = subprocess.run([sys.executable, "-c", MOVED_ASIDE_KILL, str(out)],
                          env=subprocess_env(tmp_path / "cache"), cwd=REPO).returncode  # fmt: skip
    assert code == 9 and not out.exists()
    from femto.tokenizers.folder import _restore_moved_aside, replace_tokenizer_folder

    _restore_moved_aside(out)  # what the next `tokenize train` does first: the old one is back
    assert load_tokenizer(out).vocab_size == 5
    replace_tokenizer_folder(load_tokenizer_like("\nq"), out)
    assert load_tokenizer(out).vocab_size == 2 and hidden_entries(tmp_path) == []
