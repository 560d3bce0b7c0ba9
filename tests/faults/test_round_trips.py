"""Exact round trips of files, `\\r\\n` included, for every tokenizer: `femto tokenize encode --file`
reads bytes exactly and `decode` gives them back; the library round-trips any text it can encode.
"""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from femto.data import resolve_corpus, train_tokenizer
from femto.errors import TokenizerError
from tests.faults.helpers_b import invoke, write_corpus

# carriage returns alone and before newlines, tabs, runs of spaces, a lone trailing \r, non-ASCII
TRICKY = "first line\r\nsecond\r\n\r\n\tindented  twice   \rcarriage\n\n\n  é, ü, ß, 😀\r\nend\r"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("round")
    path = write_corpus(root / "corpus.txt", 30_000)
    with open(path, "ab") as f:
        f.write(TRICKY.encode("utf-8") * 5)
    return path


@pytest.fixture(scope="module", params=["char", "byte", "sentencepiece"])
def folder(request, corpus) -> pathlib.Path:
    out = corpus.parent / request.param
    args = ["tokenize", "train", "--tokenizer", request.param, "--data", corpus, "--out", out]
    if request.param == "sentencepiece":
        args += ["--vocab", "400"]
    result = invoke(args, corpus.parent / "cache")
    assert result.exit_code == 0, result.output
    return out


def test_encode_file_and_decode_give_the_bytes_back(folder, tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(TRICKY.encode("utf-8"))
    encoded = invoke(["tokenize", "encode", "--out", folder, "--file", source], tmp_path)
    assert encoded.exit_code == 0, encoded.output
    ids = encoded.output.split()
    decoded = invoke(["tokenize", "decode", "--out", folder, *ids], tmp_path)
    assert decoded.exit_code == 0, decoded.output
    assert decoded.output_bytes == source.read_bytes()  # not a terminal: no newline added


def test_encode_file_equals_encode_text(folder, tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(TRICKY.encode("utf-8"))
    by_file = invoke(["tokenize", "encode", "--out", folder, "--file", source], tmp_path).output
    by_arg = invoke(["tokenize", "encode", "--out", folder, TRICKY], tmp_path).output
    assert by_file == by_arg


def test_a_file_that_is_not_utf8_or_not_a_file(folder, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\r\n".encode("latin-1"))
    result = invoke(["tokenize", "encode", "--out", folder, "--file", bad], tmp_path)
    assert result.exit_code == 1 and "is not UTF-8 (byte 3)" in result.output
    result = invoke(["tokenize", "encode", "--out", folder, "--file", tmp_path], tmp_path)
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_a_run_directory_round_trips_crlf(corpus, tmp_path):
    from tests.faults.helpers_b import TINY

    run = tmp_path / "run"
    result = invoke(["train", "--data", corpus, "--out", run, *TINY], tmp_path / "cache")
    assert result.exit_code == 0, result.output
    source = tmp_path / "in.txt"
    source.write_bytes(TRICKY.encode("utf-8"))
    ids = invoke(["tokenize", "encode", "--out", run, "--file", source], tmp_path).output.split()
    back = invoke(["tokenize", "decode", "--out", run, *ids], tmp_path).output_bytes
    assert back == source.read_bytes()


@pytest.fixture(scope="module")
def tokenizers(corpus):
    parsed = resolve_corpus(str(corpus))
    return {
        "char": train_tokenizer(parsed, "char"),
        "byte": train_tokenizer(parsed, "byte"),
        "sentencepiece": train_tokenizer(parsed, "sentencepiece", 400),
    }


@settings(max_examples=60)
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_byte_and_sentencepiece_round_trip_any_text(tokenizers, text):
    for name in ("byte", "sentencepiece"):
        tokenizer = tokenizers[name]
        assert tokenizer.decode(tokenizer.encode(text)) == text, name


@settings(max_examples=60)
@given(data=st.data())
def test_char_round_trips_text_of_its_vocabulary_and_names_the_rest(tokenizers, data):
    tokenizer = tokenizers["char"]
    text = data.draw(st.text(st.sampled_from(tokenizer.chars), max_size=80))
    assert tokenizer.decode(tokenizer.encode(text)) == text
    outside = data.draw(st.characters(blacklist_categories=("Cs",)).filter(
        lambda c: c not in tokenizer.chars))  # fmt: skip
    with pytest.raises(TokenizerError, match="U\\+"):
        tokenizer.encode(text + outside)
