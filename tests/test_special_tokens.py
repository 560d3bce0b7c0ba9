"""End-of-text handling users can see: the literal marker in a prompt is ordinary text unless
--allow-special; sampling shows an end-of-text as a document break or stops there (--stop-at-eot);
streamed text never shows U+FFFD for a character that a later token completes."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from click.testing import CliRunner

from femto import checkpoint as ckpt
from femto.cli import main
from femto.data import bundled_root
from femto.model import GPTConfig
from femto.sample import TextStream, show_text
from femto.tokenizers.base import EOT_MARKER, save_tokenizer
from femto.tokenizers.char import CharTokenizer
from femto.tokenizers.sentencepiece import SentencePieceTokenizer
from femto.tokenizers.special import encode_text

STORIES = (bundled_root() / "tinystories" / "TinyStories-valid-head.txt").read_text("utf-8")
STORIES = STORIES[:40_000]
TEXT = STORIES.replace("\n" + EOT_MARKER + "\n", EOT_MARKER)


@pytest.fixture(scope="module")
def char_tok():
    return CharTokenizer.train([TEXT + "<|>"], eot=EOT_MARKER)


@pytest.fixture(scope="module")
def sp_tok():
    return SentencePieceTokenizer.train([TEXT], 400, eot=EOT_MARKER)


@pytest.mark.parametrize("kind", ["char", "sp"])
def test_marker_is_ordinary_text_unless_allowed(kind, char_tok, sp_tok):
    tok = char_tok if kind == "char" else sp_tok
    text = f"The end.{EOT_MARKER}Once"
    special = encode_text(tok, text, allow_special=True)
    ordinary = encode_text(tok, text)
    assert tok.eot_id in special and tok.eot_id not in ordinary
    assert tok.decode(ordinary) == text == tok.decode(special)


def test_show_text_writes_a_document_break(char_tok):
    ids = char_tok.encode(f"one{EOT_MARKER}two")
    assert show_text(char_tok, ids) == "one\n\ntwo"
    pieces = []
    stream = TextStream(char_tok, pieces.append, char_tok.encode("x"))
    for token in ids:
        stream(token)
    stream.flush()
    assert "".join(pieces) == "one\n\ntwo" and EOT_MARKER not in "".join(pieces)


def test_text_stream_waits_when_the_context_ends_mid_character():
    class Bytes:
        eot_id = None

        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    pieces = []
    euro = list("€".encode())
    stream = TextStream(Bytes(), pieces.append, context=[ord("a"), *euro[:2]])
    stream(euro[2])
    stream(ord("b"))
    assert "".join(pieces) == "€b" and "\ufffd" not in "".join(pieces)


def make_run(tmp_path: pathlib.Path, tokenizer) -> pathlib.Path:
    config = GPTConfig(tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    rng = np.random.default_rng(0)
    weights = {
        n: (rng.standard_normal(s) * 0.02).astype(np.float32)
        for n, s in config.param_shapes().items()
    }
    # the end-of-text token dominates every prediction: a sampled document ends at once
    if tokenizer.eot_id is not None:
        weights["transformer.wte.weight"][tokenizer.eot_id] = 5.0
    weights["transformer.ln_f.weight"] = np.full(16, 5.0, np.float32)
    weights["transformer.ln_f.bias"] = np.full(16, 5.0, np.float32)
    run = tmp_path / "run"
    state = ckpt.RunState(model=config, train={"tokenizer": tokenizer.name})
    state.tokenizer = save_tokenizer(tokenizer, run)
    ckpt.save_checkpoint(run, weights, {}, state)
    return run


def sample(run, *extra):
    args = ["sample", "--out", str(run), "--tokens", "4", "--temperature", "0", *extra]
    return CliRunner().invoke(main, args)


def test_sample_shows_or_stops_at_end_of_text(tmp_path, char_tok):
    run = make_run(tmp_path, char_tok)
    shown = sample(run, "--prompt", "Once")
    assert shown.exit_code == 0, shown.output
    assert shown.output == "Once" + "\n\n" * 4 + "\n"
    stopped = sample(run, "--prompt", "Once", "--stop-at-eot")
    assert stopped.output == "Once\n\n\n"
    literal = sample(run, "--prompt", f"a{EOT_MARKER}b", "--tokens", "0")
    assert literal.output == f"a{EOT_MARKER}b\n"  # ordinary text: shown as typed
    allowed = sample(run, "--prompt", f"a{EOT_MARKER}b", "--tokens", "0", "--allow-special")
    assert allowed.output == "a\n\nb\n"


def test_tokenize_encode_allow_special(tmp_path, char_tok):
    run = make_run(tmp_path, char_tok)
    args = ["tokenize", "encode", "--out", str(run), f"a{EOT_MARKER}"]
    plain = CliRunner().invoke(main, args).output.split()
    special = CliRunner().invoke(main, [*args, "--allow-special"]).output.split()
    assert len(plain) == 1 + len(EOT_MARKER) and special[-1] == str(char_tok.eot_id)


def test_stop_at_eot_needs_an_end_of_text_token(tmp_path):
    run = make_run(tmp_path, CharTokenizer.train(["Once upon a time\n"]))
    result = sample(run, "--stop-at-eot")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: --stop-at-eot: the tokenizer of {run} has no end-of-text token (its corpus had no "
        "document breaks)"
    ]


@pytest.mark.parametrize("kind", ["byte", "sp"])
def test_streamed_text_is_the_decoded_text(kind, sp_tok):
    from femto.tokenizers.byte import ByteTokenizer

    tok = ByteTokenizer() if kind == "byte" else sp_tok
    rng = np.random.default_rng(3)
    text = "Héllo wörld → 🙂 ok\n" * 3
    ids = tok.encode(text) + [int(i) for i in rng.integers(0, tok.vocab_size, 200)]
    ids = [i for i in ids if i != tok.eot_id]
    pieces = []
    stream = TextStream(tok, pieces.append)
    for token in ids:
        stream(token)
    stream.flush()
    assert "".join(pieces) == tok.decode(ids)
    clean = []
    stream = TextStream(tok, clean.append)
    for token in tok.encode(text):
        stream(token)
    assert "".join(clean) == text and not any("\ufffd" in piece for piece in clean)
