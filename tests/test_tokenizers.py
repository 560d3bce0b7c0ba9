"""The char, byte and sentencepiece tokenizers: lossless round trips (hypothesis), errors that name
the character and position, vocabulary-size errors, and save/load through a run directory."""

from __future__ import annotations

import json
import pathlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from femto.data import resolve_corpus, train_tokenizer
from femto.errors import TokenizerError
from femto.tokenizers import sentencepiece as sp_module
from femto.tokenizers.base import (
    EOT_MARKER,
    available_tokenizers,
    get_tokenizer_class,
    load_tokenizer,
    save_tokenizer,
)
from femto.tokenizers.byte import ByteTokenizer
from femto.tokenizers.char import CharTokenizer
from femto.tokenizers.sentencepiece import SentencePieceTokenizer

# the whitespace and scripts that naive tokenizers lose: newlines, tabs, runs of spaces, CRLF,
# non-ASCII letters, emoji, and sentencepiece's own space mark U+2581
TRICKY = [
    "\n",
    "\t",
    " ",
    "  ",
    "   ",
    "\r\n",
    "\r",
    "é",
    "ß",
    "日本",
    "🙂",
    "👩‍👩‍👧",
    "\u2581",
    "\0",
]
CASES = [
    "",
    " ",
    "\n",
    "  leading and trailing  ",
    "line one\nline two\n\n\nafter blank lines\n",
    "tabs\tand\t\tmore\ttabs",
    "windows\r\nline\r\nendings\r\n",
    "naïve café, Straße, Ελληνικά, русский, 日本語, 한국어",
    "emoji 🙂🚀 and a family 👩‍👩‍👧 and flags 🇫🇷",
    "\u2581 literal space marks \u2581\u2581 here",
    "   \n\t \r\n  ",
    f"story one{EOT_MARKER}story two{EOT_MARKER}",
]
any_text = st.lists(
    st.one_of(st.sampled_from(TRICKY), st.characters(blacklist_categories=("Cs",))), max_size=60
).map("".join)
# 60 kB of the bundled TinyStories excerpt: enough for a 300-piece vocabulary, quick to train on
TRAINING_TEXT = "".join(resolve_corpus("tinystories").texts())[:60_000].replace(EOT_MARKER, "\n")


# ---- char ------------------------------------------------------------------------------------


def test_char_vocabulary_is_sorted_unique_characters():
    tok = CharTokenizer.train(["hello", " world\n"])
    assert tok.chars == sorted(set("hello world\n")) and tok.vocab_size == 9
    assert tok.eot_id is None
    assert tok.encode("hello") == [tok.chars.index(c) for c in "hello"]


def test_char_shakespeare_has_65_symbols():
    tok = train_tokenizer(resolve_corpus("shakespeare"), "char")
    assert tok.vocab_size == 65 and tok.chars[:2] == ["\n", " "]


@given(st.lists(st.sampled_from(TRICKY + list("abc")), max_size=60).map("".join))
def test_char_round_trip(text):
    tok = CharTokenizer(sorted(set("".join(TRICKY) + "abc")))
    assert tok.decode(tok.encode(text)) == text


def test_char_unknown_character_names_it_and_its_position():
    tok = CharTokenizer(sorted("abc "))
    with pytest.raises(TokenizerError, match=r"character 'é' \(U\+00E9\) at position 5 is not"):
        tok.encode("abc aé")
    with_eot = CharTokenizer(sorted("abc"), eot=EOT_MARKER)
    with pytest.raises(TokenizerError, match=r"'z' \(U\+007A\) at position 16"):
        with_eot.encode(f"ab{EOT_MARKER}cz")


def test_char_eot_is_one_id_only_when_the_corpus_has_it():
    tok = CharTokenizer.train([f"ab{EOT_MARKER}", "ba"], eot=EOT_MARKER)
    assert tok.chars == ["a", "b"] and tok.eot_id == 2 and tok.vocab_size == 3
    assert tok.encode(f"a{EOT_MARKER}b") == [0, 2, 1]
    assert tok.decode([0, 2, 1]) == f"a{EOT_MARKER}b"
    assert CharTokenizer.train(["ab"], eot=EOT_MARKER).eot_id is None


def test_char_vocab_size_is_fixed_by_the_corpus():
    with pytest.raises(
        TokenizerError, match=r"has 3 symbols, not 10; omit --vocab or pass --vocab 3"
    ):
        CharTokenizer.train(["abc"], vocab_size=10)
    with pytest.raises(TokenizerError, match="empty corpus"):
        CharTokenizer.train([""])


def test_char_decode_rejects_ids_outside_the_vocabulary():
    with pytest.raises(TokenizerError, match=r"token id 7 is outside the char vocabulary \(0..2\)"):
        CharTokenizer(sorted("abc")).decode([0, 7])


# ---- byte ------------------------------------------------------------------------------------


@given(any_text)
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids) and tok.decode(ids) == text


def test_byte_vocabulary_and_errors():
    assert ByteTokenizer.train([], None).vocab_size == 256
    with pytest.raises(TokenizerError, match="always 256, not 500"):
        ByteTokenizer.train([], 500)
    with pytest.raises(TokenizerError, match=r"U\+D800 at position 1 is a lone surrogate"):
        ByteTokenizer().encode("a\ud800")
    with pytest.raises(TokenizerError, match=r"token id 256 is not a byte"):
        ByteTokenizer().decode([1, 256])
    assert ByteTokenizer().decode([0xE2, 0x82]) == "\ufffd"  # a cut multi-byte character


# ---- sentencepiece ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_unigram() -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train([TRAINING_TEXT], vocab_size=400)


@pytest.fixture(scope="module")
def sp_bpe() -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train([TRAINING_TEXT], vocab_size=400, model_type="bpe")


@pytest.fixture(scope="module")
def sp_stories() -> SentencePieceTokenizer:
    return train_tokenizer(resolve_corpus("tinystories"), "sentencepiece", 500)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("which", ["sp_unigram", "sp_bpe"])
def test_sentencepiece_round_trips_the_tricky_cases(request, which, case):
    tok = request.getfixturevalue(which)
    assert tok.decode(tok.encode(case)) == case


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=any_text)
def test_sentencepiece_round_trip_any_text(sp_unigram, sp_bpe, text):
    for tok in (sp_unigram, sp_bpe):
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text


def test_sentencepiece_keeps_newlines_and_whitespace_as_pieces(sp_unigram):
    ids = sp_unigram.encode("cat\n\ndog")
    newline = sp_unigram._sp.piece_to_id("\n")
    assert ids.count(newline) == 2
    assert sp_unigram.decode(sp_unigram.encode("a  \t b")) == "a  \t b"


def test_sentencepiece_trained_on_tinystories(sp_stories):
    assert sp_stories.vocab_size == 500 and sp_stories.eot is not None
    ids = sp_stories.encode(f"The end.{EOT_MARKER}Once upon a time")
    assert ids.count(sp_stories.eot_id) == 1
    # common words become single pieces, so a story is much shorter in tokens than in characters
    story = "Once upon a time, there was a little girl named Lily. She loved to play outside."
    assert len(sp_stories.encode(story)) < len(story) / 2.5


def test_sentencepiece_long_text_encodes_like_whole(sp_unigram, monkeypatch):
    text = TRAINING_TEXT[:3000] + "\u2581x\n" + TRAINING_TEXT[:2000]
    whole = sp_unigram.encode(text)
    monkeypatch.setattr(sp_module, "ENCODE_PIECE_CHARS", 50)
    assert sp_unigram.encode(text) == whole


def test_sentencepiece_is_deterministic():
    first = SentencePieceTokenizer.train([TRAINING_TEXT], vocab_size=350)
    second = SentencePieceTokenizer.train([TRAINING_TEXT], vocab_size=350)
    assert first.model_proto == second.model_proto


def test_sentencepiece_vocabulary_errors_are_one_line_and_silent(capfd):
    with pytest.raises(TokenizerError) as high:
        SentencePieceTokenizer.train([TRAINING_TEXT], vocab_size=50_000)
    with pytest.raises(TokenizerError) as low:
        SentencePieceTokenizer.train([TRAINING_TEXT], vocab_size=100)
    with pytest.raises(TokenizerError, match="needs a vocabulary size: pass --vocab N"):
        SentencePieceTokenizer.train([TRAINING_TEXT])
    with pytest.raises(TokenizerError, match="model type 'word' is not supported"):
        SentencePieceTokenizer.train([TRAINING_TEXT], vocab_size=300, model_type="word")
    with pytest.raises(TokenizerError, match="empty corpus"):
        SentencePieceTokenizer.train([""], vocab_size=400)
    for exc in (high.value, low.value):
        assert "\n" not in str(exc) and "src/" not in str(exc)
    assert "is too large for this corpus" in str(high.value)
    assert "use --vocab" in str(high.value) and "or less" in str(high.value)
    assert "is too small for this corpus" in str(low.value) and "or more" in str(low.value)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # sentencepiece's log is silenced


def test_sentencepiece_bpe_too_high_names_bpe():
    with pytest.raises(TokenizerError, match=r"sentencepiece bpe can make at most [\d,]+ pieces"):
        SentencePieceTokenizer.train([TRAINING_TEXT], vocab_size=50_000, model_type="bpe")


# ---- save / load -----------------------------------------------------------------------------


def all_tokenizers(sp) -> list:
    return [CharTokenizer(sorted(set(TRAINING_TEXT)), eot=EOT_MARKER), ByteTokenizer(), sp]


def test_save_and_load_round_trip(tmp_path, sp_stories):
    text = f"Once upon a time, a cat.\n{EOT_MARKER}The end."
    for tok in all_tokenizers(sp_stories):
        run = tmp_path / tok.name
        description = save_tokenizer(tok, run)
        assert json.loads((run / "tokenizer.json").read_text()) == description
        again = load_tokenizer(run)
        assert type(again) is type(tok) and again.vocab_size == tok.vocab_size
        assert again.eot_id == tok.eot_id and again.fingerprint() == tok.fingerprint()
        assert again.encode(text) == tok.encode(text)
        # the checkpoint keeps the description in config.json and passes it back itself
        assert load_tokenizer(run, description).encode(text) == tok.encode(text)
        assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp files left


def test_sentencepiece_model_file_lives_in_the_run(tmp_path, sp_unigram):
    save_tokenizer(sp_unigram, tmp_path)
    assert (tmp_path / "tokenizer.model").read_bytes() == sp_unigram.model_proto


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_corrupt_tokenizer_file_is_a_tokenizer_error(tmp_path, sp_unigram, kind):
    tok = CharTokenizer(sorted("abc")) if kind == "char" else sp_unigram
    description = save_tokenizer(tok, tmp_path)
    path = tmp_path / description["file"]
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(TokenizerError, match=r"is corrupt: its sha256 differs"):
        load_tokenizer(tmp_path)
    # without a recorded checksum the content itself is checked
    no_sum = {k: v for k, v in description.items() if k != "sha256"}
    with pytest.raises(TokenizerError, match=str(path.name)):
        load_tokenizer(tmp_path, no_sum)
    path.unlink()
    with pytest.raises(TokenizerError, match=r"is missing: .*femto tokenize train --out DIR"):
        load_tokenizer(tmp_path)


def test_corrupt_description_is_a_tokenizer_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=r"tokenizer.json is corrupt: not UTF-8 JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "nope"}')
    with pytest.raises(TokenizerError, match=r"unknown tokenizer 'nope': available are"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("[1]")
    with pytest.raises(TokenizerError, match="expected a JSON object"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match=r"is missing"):
        load_tokenizer(pathlib.Path(tmp_path / "nowhere"))


def test_registry_lists_builtins_and_rejects_unknown():
    assert {"char", "byte", "sentencepiece"} <= set(available_tokenizers())
    assert get_tokenizer_class("byte") is ByteTokenizer
    with pytest.raises(TokenizerError, match=r"entry-point group 'femto.tokenizers'"):
        get_tokenizer_class("wordpiece")
