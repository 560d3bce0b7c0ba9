"""`femto export --hf`: transformers loads the folder as GPT2LMHeadModel, its logits match femto's,
and the exported tokenizer.json gives femto's ids for the char, byte and sentencepiece tokenizers.
Skipped when transformers (with torch) is not installed: the `hf` extra, not the test extra."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from click.testing import CliRunner

from femto import checkpoint as ckpt
from femto.backend.base import get_backend
from femto.cli import main
from femto.data import bundled_root
from femto.model import GPT, GPTConfig
from femto.tokenizers.base import EOT_MARKER, save_tokenizer
from femto.tokenizers.byte import ByteTokenizer
from femto.tokenizers.char import CharTokenizer
from femto.tokenizers.sentencepiece import SentencePieceTokenizer

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is absent")
torch = pytest.importorskip("torch", reason="the hf extra (torch) is absent")

SHAKESPEARE = (bundled_root() / "shakespeare" / "tinyshakespeare.txt").read_text(encoding="utf-8")
STORIES = SHAKESPEARE[:30_000].replace("\n\n", "\n" + EOT_MARKER + "\n")
PROBES = [
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "  two  spaces,\ttab and caf\u00e9 \u00fcber 123!\n",
    "ROMEO:\nA" + EOT_MARKER + "next document",
]


def make_tokenizer(kind: str):
    if kind == "char":
        return CharTokenizer.train([STORIES, *PROBES, SHAKESPEARE[40_000:42_000]], eot=EOT_MARKER)
    if kind == "byte":
        return ByteTokenizer()
    model_type = kind.split("-")[1]
    return SentencePieceTokenizer.train([STORIES], 400, eot=EOT_MARKER, model_type=model_type)


def make_run(tmp_path: pathlib.Path, tokenizer, bias: bool = True) -> pathlib.Path:
    """A run directory holding random weights (large enough that the logits differ a lot)."""
    config = GPTConfig(
        tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16, bias=bias
    )
    rng = np.random.default_rng(0)
    weights = {
        name: (rng.standard_normal(shape) * (0.3 if len(shape) > 1 else 0.1)).astype(np.float32)
        + (1.0 if ".ln_" in name and name.endswith("weight") else 0.0)
        for name, shape in config.param_shapes().items()
    }
    run = tmp_path / "run"
    state = ckpt.RunState(model=config, train={"tokenizer": tokenizer.name}, step=7)
    state.tokenizer = save_tokenizer(tokenizer, run)
    ckpt.save_checkpoint(run, weights, {}, state)
    return run


def export(run: pathlib.Path, hf: pathlib.Path, *extra: str):
    return CliRunner().invoke(main, ["export", "--out", str(run), "--hf", str(hf), *extra])


@pytest.mark.parametrize("bias", [True, False])
def test_logits_match_femto(tmp_path, bias):
    tokenizer = make_tokenizer("char")
    run = make_run(tmp_path, tokenizer, bias)
    result = export(run, tmp_path / "hf")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["activation_function"] == "gelu_new" and config["layer_norm_epsilon"] == 1e-5
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    model = GPT(ckpt.load_state(run).model, get_backend("cpu"))
    model.load_numpy(ckpt.load_weights(run, ckpt.load_state(run)))
    ids = np.asarray([tokenizer.encode(PROBES[0][:32])], dtype=np.int32)  # (1, T)
    ours = model(ids)[0].numpy()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    assert np.abs(ours).max() > 1.0  # not a trivially small comparison
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["char", "byte", "sentencepiece-unigram", "sentencepiece-bpe"])
def test_tokenizer_round_trips_ids(tmp_path, kind):
    tokenizer = make_tokenizer(kind)
    run = make_run(tmp_path, tokenizer)
    assert export(run, tmp_path / "hf").exit_code == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = PROBES + [SHAKESPEARE[40_000:42_000]]
    for text in texts:
        ids = tokenizer.encode(text)
        assert hf_tok(text)["input_ids"] == ids, text
        assert hf_tok.decode(ids) == tokenizer.decode(ids)


def test_pipeline_generates(tmp_path):
    run = make_run(tmp_path, make_tokenizer("sentencepiece-unigram"))
    assert export(run, tmp_path / "hf").exit_code == 0
    generate = transformers.pipeline("text-generation", str(tmp_path / "hf"), device="cpu")
    out = generate("ROMEO:", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("ROMEO:")


def test_export_refuses_a_non_empty_folder(tmp_path):
    run = make_run(tmp_path, make_tokenizer("byte"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    result = export(run, tmp_path / "hf")
    assert result.exit_code == 1 and "already exists and is not an empty directory" in result.output
    assert (tmp_path / "hf" / "keep.txt").read_text() == "mine"
    result = export(run, tmp_path / "hf2", "--checkpoint", "best")
    assert result.exit_code == 1 and "has no best checkpoint" in result.output
    assert not (tmp_path / "hf2").exists()
