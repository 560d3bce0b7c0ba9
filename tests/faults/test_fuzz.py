"""Fuzzing with hypothesis: the safetensors decoder, the config loader, the tokenizers (their files
and their input) and the Reddit reader raise nothing but femto's own clean errors on any input.

Each test keeps to a few seconds (derandomised, bounded example counts).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
from dataclasses import fields

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from femto.checkpoint import decode_safetensors, encode_safetensors, load_state
from femto.data import resolve_corpus, train_tokenizer
from femto.data.loaders import fresh_skipped as _fresh_skipped
from femto.data.reddit import read_reddit as _read_reddit
from femto.errors import CheckpointError, DatasetError, FemtoError, TokenizerError
from femto.model import GPTConfig
from femto.tokenizers.base import load_tokenizer, save_tokenizer
from femto.train import TrainConfig
from tests.faults.helpers_b import write_corpus

FUZZ = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


# ---- safetensors ----

VALID = encode_safetensors(
    {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float32)}, {"k": "v"}
)


@FUZZ
@given(st.binary(max_size=200))
def test_safetensors_decoder_on_any_bytes(buf):
    try:
        decode_safetensors(buf, "fuzz.safetensors")
    except CheckpointError:
        pass


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6),
       st.integers(0, len(VALID)))  # fmt: skip
def test_safetensors_decoder_on_damaged_files(flips, cut):
    buf = bytearray(VALID[:cut] if cut < len(VALID) - 1 else VALID)
    for where, value in flips:
        if where < len(buf):
            buf[where] = value
    try:
        tensors, _ = decode_safetensors(bytes(buf), "fuzz.safetensors")
    except CheckpointError:
        return
    assert all(isinstance(t, np.ndarray) and t.dtype == np.float32 for t in tensors.values())


@FUZZ
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=4))
def test_safetensors_decoder_on_any_json_header(header):
    raw = json.dumps(header).encode()
    try:
        decode_safetensors(len(raw).to_bytes(8, "little") + raw + b"\0" * 16, "fuzz.safetensors")
    except CheckpointError:
        pass


# ---- config.json ----


def good_config() -> dict:
    return {
        "format": "femto-run", "format_version": 1, "model": GPTConfig().to_dict(),
        "train": {"data": "shakespeare"}, "step": 3, "tokens_seen": 10, "best_val_loss": 2.5,
        "rng": {}, "tokenizer": {"kind": "char"},
    }  # fmt: skip


@pytest.fixture(scope="module")
def run_dir():
    path = pathlib.Path(tempfile.mkdtemp(prefix="femto-fuzz-"))
    yield path
    shutil.rmtree(path)


@FUZZ
@given(st.sampled_from(sorted(good_config()) + ["model.n_layer", "model.bias", "model.n_embd",
                                                "rng.data", "model.vocab_size"]), json_values)
def test_config_loader_on_any_value_of_any_key(run_dir, key, value):  # fmt: skip
    config = good_config()
    if "." in key:
        outer, inner = key.split(".")
        config[outer][inner] = value
    else:
        config[key] = value
    (run_dir / "config.json").write_text(json.dumps(config))
    try:
        load_state(run_dir)
    except CheckpointError:
        pass


@FUZZ
@given(st.binary(max_size=120) | json_values.map(lambda v: json.dumps(v).encode()))
def test_config_loader_on_any_file(run_dir, raw):
    (run_dir / "config.json").write_bytes(raw)
    with pytest.raises(CheckpointError):
        load_state(run_dir)


# ---- tokenizers ----


@pytest.fixture(scope="module")
def tokenizer_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    corpus = resolve_corpus(str(write_corpus(root / "corpus.txt", 20_000)))
    folders = {}
    for name, vocab in (("char", None), ("byte", None), ("sentencepiece", 320)):
        tokenizer = train_tokenizer(corpus, name, vocab)
        save_tokenizer(tokenizer, root / name)
        folders[name] = (root / name, tokenizer)
    return folders


@FUZZ
@given(st.sampled_from(["char", "byte", "sentencepiece"]), st.data())
def test_tokenizer_loader_on_damaged_files(tokenizer_folders, tmp_path_factory, kind, data):
    source, _ = tokenizer_folders[kind]
    target = pathlib.Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    try:
        for path in source.iterdir():
            raw = bytearray(path.read_bytes())
            if data.draw(st.booleans(), label=f"damage {path.name}"):
                cut = data.draw(st.integers(0, len(raw)), label="cut")
                raw = raw[:cut]
                for where in data.draw(st.lists(st.integers(0, max(len(raw) - 1, 0)), max_size=4)):
                    if raw:
                        raw[where] ^= data.draw(st.integers(1, 255))
            (target / path.name).write_bytes(bytes(raw))
        try:
            load_tokenizer(target)
        except TokenizerError:
            pass
    finally:
        shutil.rmtree(target)


@FUZZ
@given(st.sampled_from(["char", "byte", "sentencepiece"]),
       st.dictionaries(st.sampled_from(["kind", "file", "sha256", "vocab_size", "eot", "eot_id",
                                         "version"]), json_values, max_size=5))  # fmt: skip
def test_tokenizer_loader_on_any_description(tokenizer_folders, kind, description):
    folder, _ = tokenizer_folders[kind]
    try:
        load_tokenizer(folder, {"kind": kind, **description})
    except TokenizerError:
        pass


@FUZZ
@given(st.sampled_from(["char", "byte", "sentencepiece"]), st.text(max_size=60),
       st.lists(st.integers(-5, 70_000), max_size=20))  # fmt: skip
def test_tokenizers_on_any_text_and_ids(tokenizer_folders, kind, text, ids):
    _, tokenizer = tokenizer_folders[kind]
    try:
        encoded = tokenizer.encode(text)
    except TokenizerError:
        pass
    else:
        assert all(0 <= i < tokenizer.vocab_size for i in encoded)
        assert tokenizer.decode(encoded) == text
    try:
        assert isinstance(tokenizer.decode(ids), str)
    except TokenizerError:
        pass


# ---- the Reddit reader ----

reddit_lines = st.one_of(
    st.binary(max_size=40),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["body", "author", "id"]), json_values, max_size=3).map(
        lambda d: json.dumps(d).encode()
    ),
    st.text(max_size=30).map(lambda t: json.dumps({"body": t}).encode()),
)


@FUZZ
@given(st.lists(reddit_lines, max_size=8), st.sampled_from([b"\n", b"\r\n"]))
def test_reddit_reader_on_any_lines(run_dir, lines, newline):
    path = run_dir / "RC_2006-01.jsonl"
    path.write_bytes(newline.join(line.replace(b"\n", b" ") for line in lines))
    skipped = _fresh_skipped()
    try:
        for text, consumed in _read_reddit(path, skipped):
            assert isinstance(text, str) and 0 <= consumed <= path.stat().st_size
    except DatasetError:
        pass


@FUZZ
@given(st.binary(max_size=300))
def test_reddit_reader_on_any_zst_bytes(run_dir, raw):
    import zstandard

    path = run_dir / "RC_2006-02.zst"
    compressed = zstandard.ZstdCompressor().compress(raw)
    for data in (raw, compressed, compressed[: len(compressed) // 2]):
        path.write_bytes(data)
        try:
            list(_read_reddit(path, _fresh_skipped()))
        except FemtoError as exc:
            assert isinstance(exc, DatasetError)


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(f.name for f in fields(TrainConfig))), json_values,
                       max_size=4))  # fmt: skip
def test_training_options_from_config_json(options):
    try:
        TrainConfig.from_dict(options)
    except FemtoError:
        pass
