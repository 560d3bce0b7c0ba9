"""Corpora (bundled, paths, folders, TinyStories, Reddit dumps), the token cache and batches.

Reddit dumps here are synthetic comments written by the tests in the Pushshift format; the real
sample under shared/ is never copied into the repository.
"""

from __future__ import annotations

import io
import json
import logging
import pathlib

import numpy as np
import pytest
import zstandard

from femto.data import loaders
from femto.data import (
    encode_corpus,
    eval_windows,
    get_batch,
    resolve_corpus,
    train_tokenizer,
    train_val_split,
)
from femto.errors import ConfigError, DatasetError, TokenizerError
from femto.tokenizers.base import EOT_MARKER
from femto.tokenizers.char import CharTokenizer


def write_dump(path: pathlib.Path, lines: list[str], compress: bool = False) -> pathlib.Path:
    raw = "".join(line + "\n" for line in lines).encode("utf-8")
    if compress:
        # streamed with long-distance matching and a 1 GiB window, as the Pushshift dumps are: a
        # decoder with zstd's default window limit (128 MiB) refuses such a frame
        params = zstandard.ZstdCompressionParameters.from_level(3, window_log=30, enable_ldm=True)
        out = io.BytesIO()
        with zstandard.ZstdCompressor(compression_params=params).stream_writer(
            out, closefd=False
        ) as writer:
            writer.write(raw)
        raw = out.getvalue()
        assert zstandard.get_frame_parameters(raw).window_size == 1 << 30
    path.write_bytes(raw)
    return path


def comment(body, **extra) -> str:
    obj = {"id": "c0", "author": "someone", "subreddit": "reddit.com", "created_utc": "1139000000"}
    obj.update(extra)
    obj["body"] = body
    return json.dumps(obj)


# ---- corpora ---------------------------------------------------------------------------------


def test_bundled_shakespeare_streams_verbatim_and_splits_like_nanogpt():
    corpus = resolve_corpus("shakespeare")
    assert corpus.name == "shakespeare" and corpus.eot is None
    text = "".join(corpus.texts())
    assert text == corpus.paths[0].read_text(encoding="utf-8")
    assert len(text) == 1_115_394
    tokens = np.arange(len(text))
    train, val = train_val_split(tokens)
    assert (len(train), len(val)) == (1_003_854, 111_540)
    assert val[0] == train[-1] + 1


def test_bundled_tinystories_separator_becomes_eot_marker():
    corpus = resolve_corpus("tinystories")
    assert corpus.eot == EOT_MARKER
    text = "".join(corpus.texts())
    stories = text.split(EOT_MARKER)
    assert len(stories) == 2_387 + 1 and stories[-1] == ""
    assert stories[1].startswith("Once upon a time, in a big forest, there lived a rhinoceros")
    assert all(s == s.strip() and s for s in stories[:-1])


def test_tinystories_loader_across_block_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(loaders, "CHUNK_BYTES", 7)  # force separators and stories to straddle blocks
    path = tmp_path / "stories.txt"
    path.write_text(
        "\n  first story.\nline two\n<|endoftext|>\nsecond é story\n<|endoftext|>\n\n"
        "<|endoftext|>\nlast, no separator"
    )
    corpus = resolve_corpus(str(path))
    assert corpus.eot == EOT_MARKER
    text = "".join(corpus.texts())
    assert text == (
        f"first story.\nline two{EOT_MARKER}second é story{EOT_MARKER}last, no separator"
    )


def test_text_file_chunks_join_to_the_file_at_any_chunk_size(tmp_path, monkeypatch):
    body = "line one\r\n\ttabbed  spaces \n\nünïcødé 🙂\nno final newline"
    path = tmp_path / "a.txt"
    path.write_text(body, encoding="utf-8", newline="")
    for size in (1, 3, 5, 64):
        monkeypatch.setattr(loaders, "CHUNK_BYTES", size)
        chunks = list(resolve_corpus(str(path)).texts())
        assert "".join(chunks) == body
        if size >= 3:  # lines shorter than 8 blocks: every chunk ends at a newline
            assert all(c.endswith("\n") for c in chunks[:-1])


def test_folder_reads_sorted_files_and_skips_hidden(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / ".hidden").write_text("never")
    corpus = resolve_corpus(str(tmp_path))
    assert [p.name for p in corpus.paths] == ["a.txt", "b.txt"]
    assert "".join(corpus.texts()) == "first\nsecond"


def test_missing_corpus_names_the_known_ones(tmp_path):
    with pytest.raises(DatasetError, match=r"no corpus at .*nope.*shakespeare, tinystories"):
        resolve_corpus(str(tmp_path / "nope"))


def test_not_downloaded_corpus_says_how_to_fetch(tmp_path):
    with pytest.raises(DatasetError, match=r"femto data fetch tinystories-full"):
        resolve_corpus("tinystories-full", data_home=tmp_path)


def test_empty_corpus_file_and_folder(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty.txt is empty \(0 bytes\)"):
        resolve_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "dir").mkdir()
    with pytest.raises(DatasetError, match=r"holds no files"):
        resolve_corpus(str(tmp_path / "dir"))


def test_non_utf8_file_reports_the_byte_offset(tmp_path, monkeypatch):
    path = tmp_path / "latin1.txt"
    path.write_bytes("héllo wörld\n".encode() + b"caf\xe9 au lait\n")
    expected = len("héllo wörld\n".encode()) + 3
    for size in (2, 5, 1 << 20):  # the offset must not depend on where blocks end
        monkeypatch.setattr(loaders, "CHUNK_BYTES", size)
        with pytest.raises(DatasetError, match=rf"not UTF-8: byte 0xe9 at offset {expected}\b"):
            list(resolve_corpus(str(path)).texts())


def test_fingerprint_follows_content(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abc\n")
    first = resolve_corpus(str(path)).fingerprint()
    assert resolve_corpus(str(path)).fingerprint() == first
    path.write_text("abd\n")
    assert resolve_corpus(str(path)).fingerprint() != first


# ---- Reddit dumps ----------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_reddit_dump_one_comment_per_paragraph(tmp_path, compress):
    name = "RC_2006-02.zst" if compress else "comments.jsonl"
    path = write_dump(
        tmp_path / name,
        [
            comment("First comment &gt; quoted &amp; done"),
            comment("[deleted]", author="[deleted]"),
            comment("[removed]"),
            comment("Two\n\n\nparagraphs   inside\r\nand a line"),
            "",
            comment("  emoji 🙂 and ü  "),
        ],
        compress=compress,
    )
    corpus = resolve_corpus(str(path))
    text = "".join(corpus.texts())
    assert text == (
        "First comment > quoted & done\n\n"
        "Two\nparagraphs   inside\nand a line\n\n"
        "emoji 🙂 and ü\n\n"
    )
    assert corpus.skipped == {"malformed": 0, "deleted": 2, "kept": 3, "first_malformed": None}


def test_reddit_malformed_lines_are_skipped_and_counted(tmp_path, caplog):
    path = write_dump(
        tmp_path / "dump.ndjson",
        [
            comment("good one"),
            "{not json",
            json.dumps({"author": "x"}),
            comment(5),
            "[1, 2]",
            comment("good two"),
        ],
    )
    corpus = resolve_corpus(str(path))
    with caplog.at_level(logging.INFO, logger="femto.data"):
        text = "".join(corpus.texts())
    assert text == "good one\n\ngood two\n\n"
    assert corpus.skipped["malformed"] == 4
    assert "skipped 4 malformed line(s) of 6 (first at line 2" in caplog.text
    assert corpus.summary() == (
        "corpus 'dump.ndjson': kept 2 comment(s), dropped 0 deleted or removed, skipped 4 "
        "malformed line(s) (first: dump.ndjson line 2: Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1))"
    )


def test_reddit_truncated_line_is_reported_as_truncated(tmp_path):
    cut = comment("a comment cut short by a partial download")[:20]
    path = write_dump(tmp_path / "dump.jsonl", [comment("fine"), cut, "{\"body\": \"x\" 3}"])
    corpus = resolve_corpus(str(path))
    assert "".join(corpus.texts()) == "fine\n\n"
    assert corpus.skipped["malformed"] == 2
    assert "line 2: truncated JSON" in corpus.summary()
    assert "Invalid control character" not in corpus.summary()


def test_reddit_invalid_utf8_line_is_malformed_not_fatal(tmp_path):
    path = tmp_path / "dump.jsonl"
    path.write_bytes(comment("fine").encode() + b'\n{"body": "caf\xe9"}\n')
    corpus = resolve_corpus(str(path))
    assert "".join(corpus.texts()) == "fine\n\n"
    assert corpus.skipped["malformed"] == 1


def test_reddit_all_lines_bad_is_fatal(tmp_path):
    path = write_dump(tmp_path / "bad.jsonl", ["nope", '{"body": 3}', "{"])
    with pytest.raises(DatasetError, match=r"none of its 3 lines is a Reddit comment.*line 1"):
        list(resolve_corpus(str(path)).texts())


def test_reddit_only_deleted_is_an_empty_corpus(tmp_path):
    path = write_dump(tmp_path / "gone.jsonl", [comment("[deleted]"), comment("[removed]")])
    with pytest.raises(DatasetError, match=r"holds no text"):
        list(resolve_corpus(str(path)).texts())


def test_truncated_zst_is_a_dataset_error(tmp_path):
    path = write_dump(tmp_path / "RC_x.zst", [comment("x" * 50)] * 200, compress=True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DatasetError, match=r"RC_x.zst"):
        list(resolve_corpus(str(path)).texts())


# ---- token cache -----------------------------------------------------------------------------


def test_encode_corpus_caches_by_content_and_tokenizer(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("hello world\n" * 50)
    corpus = resolve_corpus(str(path))
    tok = train_tokenizer(corpus, "char")
    calls = []
    tokens = encode_corpus(
        corpus, tok, tmp_path / "cache", progress=lambda d, t: calls.append((d, t))
    )
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16 and len(tokens) == 600
    assert tok.decode(tokens) == path.read_text()
    assert calls and calls[-1] == (path.stat().st_size, path.stat().st_size)
    cached = sorted((tmp_path / "cache").iterdir())
    assert len(cached) == 1
    # same content: the cached file is reused (no progress calls); new content: a new file
    calls.clear()
    again = encode_corpus(
        resolve_corpus(str(path)), tok, tmp_path / "cache", progress=lambda *a: calls.append(a)
    )
    assert calls == [] and np.array_equal(again, tokens)
    path.write_text("hello world!\n" * 50)
    corpus2 = resolve_corpus(str(path))
    encode_corpus(corpus2, train_tokenizer(corpus2, "char"), tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_encode_corpus_uses_uint32_for_big_vocabularies(tmp_path):
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c < 0xE000]
    path = tmp_path / "han.txt"
    path.write_text("".join(chars[-10:]))
    tok = CharTokenizer(sorted(chars))
    tokens = encode_corpus(resolve_corpus(str(path)), tok, tmp_path)
    assert tokens.dtype == np.uint32 and int(tokens.max()) == tok.vocab_size - 1


def test_encode_corpus_rejects_text_the_tokenizer_cannot_hold(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("abc\nxyz\n")
    tok = CharTokenizer(sorted("abc\n"))
    with pytest.raises(TokenizerError, match=r"'x' \(U\+0078\) at position 4"):
        encode_corpus(resolve_corpus(str(path)), tok, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*"))  # no half-written cache file is left


# ---- batches ---------------------------------------------------------------------------------


def test_get_batch_shapes_shift_and_determinism():
    tokens = np.arange(100, dtype=np.uint16)
    x, y = get_batch(tokens, 5, 8, np.random.default_rng(3))
    assert x.shape == y.shape == (5, 8) and x.dtype == y.dtype == np.int32
    assert np.array_equal(x[:, 1:], y[:, :-1]) and np.array_equal(y, x + 1)
    x2, _ = get_batch(tokens, 5, 8, np.random.default_rng(3))
    assert np.array_equal(x, x2)


def test_get_batch_reaches_both_ends_of_a_minimal_corpus():
    tokens = np.arange(10, dtype=np.uint16)  # T = 8: only starts 0 and 1 are legal
    x, y = get_batch(tokens, 200, 8, np.random.default_rng(0))
    assert set(x[:, 0].tolist()) == {0, 1} and int(y.max()) == 9


def test_get_batch_requires_a_generator():
    with pytest.raises(TypeError, match="Generator"):
        get_batch(np.arange(100), 2, 4, rng=None)


def test_corpus_shorter_than_one_window():
    with pytest.raises(
        DatasetError,
        match=r"has 8 tokens, fewer than one training window "
        r"\(block_size 8 \+ 1 = 9\)",
    ):
        get_batch(np.arange(8), 2, 8, np.random.default_rng(0))
    with pytest.raises(DatasetError, match=r"validation split has 3 tokens"):
        list(eval_windows(np.arange(3), 4, 2))


def test_eval_windows_cover_every_full_window_once():
    tokens = np.arange(30, dtype=np.uint32)
    batches = list(eval_windows(tokens, 4, 3))
    starts = [int(s) for x, _ in batches for s in x[:, 0]]
    assert starts == [0, 4, 8, 12, 16, 20, 24]  # 24 + 4 + 1 = 29 <= 30; 28 would need 33
    assert [len(x) for x, _ in batches] == [3, 3, 1]
    for x, y in batches:
        assert x.dtype == np.int32 and np.array_equal(y, x + 1)
    assert len(list(eval_windows(np.arange(5), 4, 8))) == 1  # exactly one window fits


def test_bad_split_fraction():
    with pytest.raises(ConfigError, match="val_fraction"):
        train_val_split(np.arange(10), 1.0)
