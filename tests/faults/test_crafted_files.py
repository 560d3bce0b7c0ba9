"""Crafted and damaged run files: every read is bounded and every problem is one line.

Deep JSON, huge configs, symlinks out of the run (to /dev/zero), FIFOs, wrong types in config.json,
non-finite weights, a dangling metrics.jsonl link: `femto sample`, `eval` and `train` refuse each
with one line naming the file, never a traceback, a hang or unbounded memory.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import threading
import time

import numpy as np
import pytest

from femto.checkpoint import decode_safetensors, encode_safetensors, load_safetensors
from femto.data import resolve_corpus
from femto.errors import CheckpointError, TokenizerError
from femto.safe_read import json_depth, read_bytes
from femto.tokenizers.base import read_json_file
from tests.faults.helpers_b import TINY, assert_one_line_error, invoke, train_tiny


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("crafted")
    train_tiny(root)
    return root


@pytest.fixture
def run(root, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(root / "run", tmp_path / "run", symlinks=True))


def sample(run: pathlib.Path, root: pathlib.Path):
    return invoke(["sample", "--out", run, "--tokens", "3"], root / "cache")


def resume(run: pathlib.Path, root: pathlib.Path, *extra):
    return invoke(["train", "--out", run, "--steps", "4", *extra], root / "cache")


def edit_config(run: pathlib.Path, change) -> None:
    config = json.loads((run / "config.json").read_text())
    change(config)
    (run / "config.json").write_text(json.dumps(config))


def test_a_safetensors_header_nested_100000_deep(run, root):
    header = b"[" * 100_000 + b"]" * 100_000
    (run / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    assert_one_line_error(sample(run, root), "model.safetensors is corrupt", "100,000 levels deep")


def test_deep_json_in_metrics_and_reddit_lines_is_skipped(run, root, tmp_path):
    with open(run / "metrics.jsonl", "a") as f:
        f.write("[" * 100_000 + "]" * 100_000 + "\n")
    assert resume(run, root).exit_code == 0
    dump = tmp_path / "comments.jsonl"
    dump.write_text('{"body": "fine"}\n' + "[" * 100_000 + "\n")
    corpus = resolve_corpus(str(dump))
    assert "".join(corpus.texts()) == "fine\n\n" and corpus.skipped["malformed"] == 1


def test_deep_json_inside_strings_does_not_count():
    assert json_depth(b'{"a": "[[[[[[[[[[{{{{{", "b": [1, {"c": "]]]"}]}') == 3
    assert json_depth(b'"\\"[[[["') == 0


def test_a_config_json_nested_deep(run, root):
    (run / "config.json").write_text("[" * 50_000 + "]" * 50_000)
    assert_one_line_error(sample(run, root), "config.json is corrupt", "levels deep")


def test_a_billion_layers_is_refused_at_once(run, root):
    edit_config(run, lambda c: c["model"].update(n_layer=1_000_000_000))
    start = time.perf_counter()
    line = assert_one_line_error(sample(run, root), "config.json", "of memory", "free")
    assert time.perf_counter() - start < 5, "the estimate must come before any allocation"
    assert "TiB" in line or "GiB" in line


def test_weights_linked_to_dev_zero(run, root):
    (run / "model.safetensors").unlink()
    os.symlink("/dev/zero", run / "model.safetensors")
    for result in (sample(run, root), resume(run, root)):
        assert_one_line_error(result, "model.safetensors leads outside")


def test_a_device_is_refused_without_reading_it(tmp_path):
    with pytest.raises(CheckpointError, match="is a device, not a regular file"):
        read_bytes(pathlib.Path("/dev/zero"), CheckpointError)


def _without_hanging(func, seconds: float = 10.0):
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(func()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "reading a FIFO must not block"
    return outcome[0]


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "optimizer.safetensors"])
def test_a_fifo_in_place_of_a_run_file(run, root, name):
    (run / name).unlink()
    os.mkfifo(run / name)
    results = [_without_hanging(lambda: sample(run, root))]
    if name == "optimizer.safetensors":  # sampling never reads it; resuming does
        results = [_without_hanging(lambda: resume(run, root))]
    assert_one_line_error(results[0], name, "FIFO")


def test_a_symlink_inside_the_run_to_a_fifo(run, root):
    os.mkfifo(run / "pipe")
    (run / "model.safetensors").unlink()
    os.symlink("pipe", run / "model.safetensors")
    assert_one_line_error(_without_hanging(lambda: sample(run, root)), "is a FIFO")


def test_a_symlink_inside_the_run_is_followed(run, root):
    os.rename(run / "model.safetensors", run / "weights.bin")
    os.symlink("weights.bin", run / "model.safetensors")
    assert sample(run, root).exit_code == 0


def test_a_file_far_larger_than_the_model_is_not_read(run, root):
    with open(run / "model.safetensors", "r+b") as f:
        f.truncate(200 << 20)  # sparse: costs no disk
    assert_one_line_error(sample(run, root), "model.safetensors is 209,715,200 bytes", "more than")


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("data", 123, "--data must be a string"),
        ("device", 5, "--device must be a string"),
        ("tokenizer", ["char"], "--tokenizer must be a string"),
        ("lr", "fast", "--lr must be a number"),
        ("steps", 2.5, "--steps must be a positive integer"),
        ("vocab", True, "--vocab must be a positive integer"),
    ],
)
def test_wrong_types_in_train(run, root, key, value, fragment):
    edit_config(run, lambda c: c["train"].update({key: value}))
    before = (run / "model.safetensors").read_bytes()
    line = assert_one_line_error(resume(run, root), "config.json")
    assert fragment in line or f'"train" option "{key}" must be a string' in line
    assert (run / "model.safetensors").read_bytes() == before
    for args in (["eval", "--out", run], ["tokenize", "stats", "--out", run]):
        result = invoke(args, root / "cache")
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        assert result.exit_code in (0, 1)


@pytest.mark.parametrize(
    "rng",
    [{"data": "x"}, {"data": {"bit_generator": "PCG64"}}, {"data": {"bit_generator": "MT19937",
     "state": {"key": [1], "pos": 0}}}, {"data": {"bit_generator": "PCG64", "state": {"state": "a",
     "inc": 1}, "has_uint32": 0, "uinteger": 0}}],
)  # fmt: skip
def test_a_bad_rng_state(run, root, rng):
    edit_config(run, lambda c: c.update(rng=rng))
    assert_one_line_error(resume(run, root), "config.json", '"rng" entry', "PCG64 state")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(run, root, value):
    path = run / "model.safetensors"
    tensors, metadata = load_safetensors(path)
    tensors["transformer.h.0.attn.c_proj.weight"][1, 2] = value
    path.write_bytes(encode_safetensors(tensors, metadata))
    for result in (sample(run, root), resume(run, root)):
        assert_one_line_error(result, "transformer.h.0.attn.c_proj.weight", "non-finite")


def test_non_finite_optimizer_moments_are_refused(run, root):
    path = run / "optimizer.safetensors"
    tensors, metadata = load_safetensors(path)
    name = sorted(tensors)[0]
    tensors[name][...] = np.nan
    path.write_bytes(encode_safetensors(tensors, metadata))
    assert_one_line_error(resume(run, root), "optimizer.safetensors", name, "non-finite")


def test_a_dangling_metrics_link_creates_nothing_outside(run, root, tmp_path):
    outside = tmp_path / "elsewhere" / "metrics.jsonl"
    outside.parent.mkdir()
    (run / "metrics.jsonl").unlink()
    os.symlink(outside, run / "metrics.jsonl")
    assert_one_line_error(resume(run, root), "metrics.jsonl", "does not exist")
    assert not outside.exists()
    new = tmp_path / "new"
    new.mkdir()
    os.symlink(outside, new / "metrics.jsonl")
    result = invoke(["train", "--data", root / "corpus.txt", "--out", new, *TINY], root / "cache")
    assert_one_line_error(result, "metrics.jsonl")
    assert not outside.exists() and not (new / "config.json").exists()


def test_a_metrics_link_out_of_the_run_is_refused(run, root, tmp_path):
    outside = tmp_path / "victim.txt"
    outside.write_text("keep me\n")
    (run / "metrics.jsonl").unlink()
    os.symlink(outside, run / "metrics.jsonl")
    assert_one_line_error(resume(run, root), "metrics.jsonl leads outside")
    assert outside.read_text() == "keep me\n"


def test_a_metrics_link_inside_the_run_is_refused_too(run, root):
    os.rename(run / "metrics.jsonl", run / "log.jsonl")
    os.symlink("log.jsonl", run / "metrics.jsonl")
    assert_one_line_error(resume(run, root), "metrics.jsonl is a symlink")


def test_a_tokenizer_file_linked_out_of_its_folder(run, root, tmp_path):
    (run / "vocab.json").unlink()
    os.symlink("/dev/zero", run / "vocab.json")
    assert_one_line_error(sample(run, root), "vocab.json leads outside")
    with pytest.raises(TokenizerError, match="leads outside"):
        read_json_file(run / "vocab.json")


def test_a_huge_safetensors_header_length_is_refused_before_reading():
    buf = (10**15).to_bytes(8, "little") + b"{}"
    with pytest.raises(CheckpointError, match="implausible"):
        decode_safetensors(buf, "x.safetensors")
