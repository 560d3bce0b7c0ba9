"""Atomic units: a tokenizer folder is replaced as a whole, the token cache checks its own length
and checksum (and is rebuilt when damaged), a truncated .zst is an error, and temporaries of
writers that died are removed at the next start (and only those).
"""

from __future__ import annotations

import logging
import os
import pathlib

import numpy as np
import pytest
import zstandard

from femto import fileio
from femto.data import encode_corpus, open_token_cache, resolve_corpus, train_tokenizer
from femto.data.token_cache import _TRAILER, _cache_trailer
from femto.errors import DatasetError, TokenizerError
from femto.fileio import remove_stale_temporaries, temporary_prefix, write_atomic
from femto.tokenizers import folder
from femto.tokenizers.base import load_tokenizer
from femto.tokenizers.char import CharTokenizer
from tests.faults.helpers_b import (
    TINY,
    assert_one_line_error,
    dead_pid,
    invoke,
    train_tiny,
    write_corpus,
)


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory) -> pathlib.Path:
    return write_corpus(tmp_path_factory.mktemp("atomic") / "corpus.txt", 20_000)


# ---- the tokenizer folder ----


def test_a_tokenizer_folder_is_replaced_as_a_whole(corpus_path, tmp_path):
    out = tmp_path / "tok"
    result = invoke(["tokenize", "train", "--data", corpus_path, "--out", out], tmp_path)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "vocab.json"]
    result = invoke(["tokenize", "train", "--tokenizer", "sentencepiece", "--vocab", "400",
                     "--data", corpus_path, "--out", out], tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.output
    # the old char tokenizer's vocab.json went with its folder: nothing mixes two tokenizers
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer.model"]
    assert load_tokenizer(out).name == "sentencepiece"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_without_an_atomic_exchange_the_folder_is_still_replaced(corpus_path, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    out = tmp_path / "tok"
    tokenizer = train_tokenizer(resolve_corpus(str(corpus_path)), "char")
    folder.replace_tokenizer_folder(tokenizer, out)
    monkeypatch.setattr(folder, "_exchange", lambda a, b: False)
    folder.replace_tokenizer_folder(CharTokenizer(list("\nabc")), out)
    assert load_tokenizer(out).vocab_size == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_a_folder_with_other_files_is_not_replaced(corpus_path, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = invoke(["tokenize", "train", "--data", corpus_path, "--out", tmp_path], tmp_path / "c")
    assert_one_line_error(result, "notes.txt", "not a tokenizer's")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_linked_tokenizer_folder_replaces_its_target(corpus_path, tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink("real", tmp_path / "link")
    assert invoke(["tokenize", "train", "--data", corpus_path, "--out", tmp_path / "link"],
                  tmp_path / "c").exit_code == 0  # fmt: skip
    assert (tmp_path / "link").is_symlink() and load_tokenizer(tmp_path / "real").name == "char"


# ---- the token cache ----


def build_cache(corpus_path, cache):
    corpus = resolve_corpus(str(corpus_path))
    tokenizer = train_tokenizer(corpus, "char")
    tokens = encode_corpus(corpus, tokenizer, cache)
    (path,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    return corpus, tokenizer, np.array(tokens), path


def test_the_cache_records_its_length_and_checksum(corpus_path, tmp_path):
    _, tokenizer, tokens, path = build_cache(corpus_path, tmp_path)
    assert path.stat().st_size == tokens.size * 2 + _TRAILER.size
    assert np.array_equal(open_token_cache(path, tokens.dtype, tokenizer.vocab_size), tokens)


@pytest.mark.parametrize("damage", ["half", "trailer", "flip", "empty", "grown"])
def test_a_damaged_cache_is_detected_and_rebuilt(corpus_path, tmp_path, caplog, damage):
    corpus, tokenizer, tokens, path = build_cache(corpus_path, tmp_path)
    raw = path.read_bytes()
    damaged = {
        "half": raw[: len(raw) // 2],
        "trailer": raw[: -_TRAILER.size],  # a cache of the old format: the bare ids
        "flip": raw[:100] + bytes([raw[100] ^ 1]) + raw[101:],
        "empty": b"",
        "grown": raw[:-_TRAILER.size] + b"\0\0" + raw[-_TRAILER.size:],
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(DatasetError, match=f"token cache {path}"):
        open_token_cache(path, tokens.dtype, tokenizer.vocab_size)
    with caplog.at_level(logging.WARNING, logger="femto.data"):
        again = encode_corpus(corpus, tokenizer, tmp_path)
    assert np.array_equal(again, tokens) and "rebuilding it" in caplog.text
    assert path.read_bytes() == raw


def test_out_of_range_ids_with_a_valid_checksum_are_detected(corpus_path, tmp_path):
    import hashlib

    corpus, tokenizer, tokens, path = build_cache(corpus_path, tmp_path)
    bad = tokens.copy()
    bad[7] = 60_000
    digest = hashlib.sha256(bad.tobytes()).digest()
    path.write_bytes(bad.tobytes() + _cache_trailer(bad.dtype, bad.size, digest))
    with pytest.raises(DatasetError, match="holds id 60000, outside the tokenizer's vocabulary"):
        open_token_cache(path, bad.dtype, tokenizer.vocab_size)
    assert np.array_equal(encode_corpus(corpus, tokenizer, tmp_path), tokens)


def test_a_resume_with_a_cut_cache_trains_on_the_whole_corpus(tmp_path):
    run = train_tiny(tmp_path)
    (cache,) = (tmp_path / "cache" / "tokens").iterdir()
    size = cache.stat().st_size
    with open(cache, "r+b") as f:
        f.truncate(size // 2)
    result = invoke(["train", "--out", run, "--steps", "3"], tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert cache.stat().st_size == size


# ---- compressed corpora ----


def test_a_truncated_zst_is_an_error_naming_the_file(tmp_path):
    lines = b"".join(b'{"body": "comment number %d, a little text"}\n' % i for i in range(5000))
    whole = zstandard.ZstdCompressor().compress(lines)
    dump = tmp_path / "RC_2006-02.zst"
    dump.write_bytes(whole[: len(whole) // 2])
    result = invoke(["tokenize", "train", "--data", dump, "--out", tmp_path / "tok"], tmp_path)
    assert_one_line_error(result, str(dump), "truncated")
    result = invoke(["train", "--data", dump, "--out", tmp_path / "run", *TINY], tmp_path)
    assert_one_line_error(result, str(dump), "truncated")
    assert not (tmp_path / "run").exists()


def test_concatenated_zst_frames_are_read_whole(tmp_path):
    compress = zstandard.ZstdCompressor().compress
    first = b'{"body": "first frame"}\n'
    second = b'{"body": "second frame"}\n{"body": "no newline at the end"}'
    dump = tmp_path / "two.zst"
    dump.write_bytes(compress(first) + compress(second))
    text = "".join(resolve_corpus(str(dump)).texts())
    assert text == "first frame\n\nsecond frame\n\nno newline at the end\n\n"


# ---- temporaries of dead writers ----


def stale_name(target: str, pid: int, suffix: str = "tmp") -> str:
    return temporary_prefix(pathlib.Path(target)).replace(f".p{os.getpid()}-", f".p{pid}-") + (
        f"abc123.{suffix}"
    )


def test_temporaries_of_dead_writers_are_removed_at_the_next_start(tmp_path):
    run = train_tiny(tmp_path)
    gone = dead_pid()
    stale = [run / stale_name("metrics.jsonl", gone), run / stale_name("vocab.json", gone)]
    live = [run / stale_name("metrics.jsonl", os.getppid()), run / ".metrics.jsonl.x8y_z.tmp"]
    for path in stale + live:
        path.write_bytes(b"partial")
    cache = tmp_path / "cache" / "tokens"
    partial_cache = cache / stale_name("corpus.txt.char.0123.u16", gone)
    partial_cache.write_bytes(b"\0" * 4096)
    result = invoke(["train", "--out", run, "--steps", "3"], tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in [*stale, partial_cache])
    # a live writer's file, and one whose writer cannot be told (no pid in its name), stay
    assert all(p.exists() for p in live)


def test_a_dead_writers_tokenizer_swap_folder_is_removed(corpus_path, tmp_path):
    half = tmp_path / stale_name("tok", dead_pid(), "new")
    half.mkdir()
    (half / "vocab.json").write_text("{")
    out = tmp_path / "tok"
    result = invoke(["tokenize", "train", "--data", corpus_path, "--out", out], tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert not half.exists()


def test_temporaries_carry_their_writer():
    name = temporary_prefix(pathlib.Path("/x/metrics.jsonl"))
    assert name.startswith(f".metrics.jsonl.p{os.getpid()}-") and fileio._WRITER.match(
        name + "q_1.tmp"
    )


def test_remove_stale_temporaries_ignores_other_hosts_and_our_own(tmp_path):
    gone = dead_pid()
    other_host = tmp_path / f".a.p{gone}-00000000.xyz.tmp"
    ours = tmp_path / stale_name("a", os.getpid())
    dead = tmp_path / stale_name("a", gone)
    for path in (other_host, ours, dead):
        path.write_text("x")
    write_atomic(tmp_path / "a", b"whole")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert other_host.exists() and ours.exists() and (tmp_path / "a").read_bytes() == b"whole"


def test_a_bad_tokenizer_description_in_a_swap_is_a_clean_error(tmp_path):
    with pytest.raises(TokenizerError):
        load_tokenizer(tmp_path)
