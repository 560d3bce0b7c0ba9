"""Run directory files: the safetensors format byte by byte, strict validation of damaged files,
bit-exact checkpoint round-trips, the commit journal under simulated crashes, and metrics.jsonl."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from femto import checkpoint as ckpt
from femto.errors import CheckpointError
from femto.model import GPT, GPTConfig

CFG = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def make_state(step: int = 3) -> ckpt.RunState:
    rng = np.random.default_rng(0)
    return ckpt.RunState(
        model=CFG,
        train={"steps": 10, "lr": 1e-3},
        step=step,
        tokens_seen=step * 64,
        best_val_loss=2.5,
        rng={"data": rng.bit_generator.state},
        tokenizer={"kind": "char", "file": "vocab.json"},
    )


def weights_and_moments(seed: int = 0):
    rng = np.random.default_rng(seed)
    weights = {n: rng.standard_normal(s).astype(np.float32) for n, s in CFG.param_shapes().items()}
    moments = {f"{n}.exp_avg": a * 0.5 for n, a in weights.items()}
    moments.update({f"{n}.exp_avg_sq": a * a for n, a in weights.items()})
    return weights, moments


def test_safetensors_layout_follows_the_format():
    tensors = {"b": np.arange(3, dtype=np.float32), "a": np.ones((2, 2), np.float32)}
    buf = ckpt.encode_safetensors(tensors, {"format": "pt"})
    (n,) = struct.unpack("<Q", buf[:8])
    assert n % 8 == 0  # padded so data starts aligned
    header = json.loads(buf[8 : 8 + n])
    assert header["__metadata__"] == {"format": "pt"}
    assert header["a"] == {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    assert header["b"] == {"dtype": "F32", "shape": [3], "data_offsets": [16, 28]}
    assert np.frombuffer(buf[8 + n + 16 :], "<f4").tolist() == [0.0, 1.0, 2.0]
    assert len(buf) == 8 + n + 28


def test_reference_reader_loads_our_files(tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package is optional")
    weights, _ = weights_and_moments()
    ckpt.save_safetensors(tmp_path / "m.safetensors", weights, {"format": "pt"})
    loaded = st.load_file(str(tmp_path / "m.safetensors"))
    assert set(loaded) == set(weights)
    for name, array in weights.items():
        np.testing.assert_array_equal(loaded[name], array)


def test_safetensors_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {
        "x": rng.standard_normal((3, 5)).astype(np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "special": np.array([np.nan, np.inf, -0.0, 1e-45], np.float32),
    }
    path = tmp_path / "t.safetensors"
    ckpt.save_safetensors(path, tensors, {"k": "v"})
    loaded, meta = ckpt.load_safetensors(path)
    assert meta == {"k": "v"}
    for name, array in tensors.items():
        assert loaded[name].tobytes() == array.tobytes() and loaded[name].shape == array.shape


def damaged(buf: bytes, header_edit=None, cut: int | None = None) -> bytes:
    n = int.from_bytes(buf[:8], "little")
    if header_edit is not None:
        header = json.loads(buf[8 : 8 + n])
        header_edit(header)
        raw = json.dumps(header).encode()
        buf = len(raw).to_bytes(8, "little") + raw + buf[8 + n :]
    return buf[:cut] if cut is not None else buf


@pytest.mark.parametrize(
    ("edit", "cut", "message"),
    [
        (None, 5, "truncated: 5 bytes"),
        (None, 40, "truncated: header promises"),
        (None, -4, r"truncated: header promises 64 data bytes, file has 60 \(interrupted save\?\)"),
        (lambda h: h["a"].update(dtype="F16"), None, "tensor a has dtype 'F16'"),
        (lambda h: h["a"].update(shape=[3, 3]), None, r"tensor a of shape \[3, 3\] needs 36 bytes"),
        (lambda h: h["b"].update(data_offsets=[12, 60]), None, "tensor b starts at data byte 12"),
        (lambda h: h.update(c={"dtype": "F32"}), None, "tensor c needs exactly"),
        (lambda h: h["a"].update(data_offsets=[0, -16]), None, "invalid data_offsets"),
    ],
)
def test_damaged_safetensors_are_rejected_with_the_file_and_tensor(tmp_path, edit, cut, message):
    tensors = {"a": np.ones((2, 2), np.float32), "b": np.ones(12, np.float32)}
    path = tmp_path / "model.safetensors"
    path.write_bytes(damaged(ckpt.encode_safetensors(tensors), edit, cut))
    with pytest.raises(CheckpointError, match=message) as info:
        ckpt.load_safetensors(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_garbage_header_and_trailing_bytes(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes((16).to_bytes(8, "little") + b"not json at all!")
    with pytest.raises(CheckpointError, match="header is not UTF-8 JSON"):
        ckpt.load_safetensors(path)
    path.write_bytes(ckpt.encode_safetensors({"a": np.ones(2, np.float32)}) + b"junk")
    with pytest.raises(CheckpointError, match="4 bytes after the last tensor"):
        ckpt.load_safetensors(path)
    path.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(CheckpointError, match="implausible"):
        ckpt.load_safetensors(path)


def test_checkpoint_round_trip_is_bit_exact(tmp_path, cpu_backend):
    model = GPT(CFG, cpu_backend, np.random.default_rng(2))
    _, moments = weights_and_moments()
    state = make_state()
    ckpt.save_checkpoint(tmp_path, model.to_numpy(), moments, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ckpt.CHECKPOINT_FILES)
    loaded_state = ckpt.load_state(tmp_path)
    assert loaded_state.to_json() == state.to_json()
    restored = GPT(CFG, cpu_backend, np.random.default_rng(99))
    restored.load_numpy(ckpt.load_weights(tmp_path, loaded_state))
    for name, array in model.to_numpy().items():
        assert restored.to_numpy()[name].tobytes() == array.tobytes(), name
    loaded_moments = ckpt.load_optimizer_state(tmp_path, loaded_state)
    assert all(loaded_moments[k].tobytes() == v.tobytes() for k, v in moments.items())
    generator = np.random.default_rng()
    generator.bit_generator.state = loaded_state.rng["data"]
    assert generator.random() == np.random.default_rng(0).random()


def test_weights_from_another_config_are_rejected(tmp_path):
    weights, moments = weights_and_moments()
    ckpt.save_checkpoint(tmp_path, weights, moments, make_state())
    bigger = make_state()
    bigger.model = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    with pytest.raises(CheckpointError, match=r"transformer.wte.weight has shape \[11, 8\]"):
        ckpt.load_weights(tmp_path, bigger)
    deeper = make_state()
    deeper.model = GPTConfig(vocab_size=11, block_size=8, n_layer=3, n_head=2, n_embd=8)
    with pytest.raises(CheckpointError, match=r"lacks tensor transformer.h.2"):
        ckpt.load_weights(tmp_path, deeper)
    later = make_state(step=4)
    with pytest.raises(CheckpointError, match="holds step 3 but config.json says step 4"):
        ckpt.load_weights(tmp_path, later)


def test_config_json_validation(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"no run in .*config.json is missing.*femto train --out"
    ):
        ckpt.load_state(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.load_state(tmp_path)
    good = make_state().to_json()
    for change, message in [
        ({"format_version": 99}, "format_version 99"),
        ({"model": {**good["model"], "n_head": 3}}, "divisible by n_head 3"),
        ({"step": "3"}, '"step" must be a int'),
        ({"format": "other"}, "not a femto run"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(CheckpointError, match=message):
            ckpt.load_state(tmp_path)


def test_a_crash_mid_commit_leaves_a_whole_checkpoint(tmp_path, monkeypatch):
    old_weights, old_moments = weights_and_moments(0)
    ckpt.save_checkpoint(tmp_path, old_weights, old_moments, make_state(step=3))
    new_weights, new_moments = weights_and_moments(1)

    # crash after the journal and the first rename: readers see the new checkpoint, whole
    real_replace = os.replace
    calls = []

    def crash_on_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # 1: journal, 2: model.safetensors, 3: optimizer.safetensors
            raise KeyboardInterrupt("simulated kill")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, new_weights, new_moments, make_state(step=4))
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    state = ckpt.load_state(tmp_path)
    assert state.step == 4
    loaded = ckpt.load_weights(tmp_path, state)
    assert all(np.array_equal(loaded[n], a) for n, a in new_weights.items())
    assert ckpt.load_optimizer_state(tmp_path, state).keys() == new_moments.keys()

    # the next save finishes the commit first, then writes its own
    ckpt.save_checkpoint(tmp_path, new_weights, new_moments, make_state(step=5))
    assert ckpt.load_state(tmp_path).step == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ckpt.CHECKPOINT_FILES)


def test_a_crash_before_the_journal_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    weights, moments = weights_and_moments(0)
    ckpt.save_checkpoint(tmp_path, weights, moments, make_state(step=3))
    real_write_atomic = ckpt.write_atomic

    def crash(path, data):
        raise KeyboardInterrupt("simulated kill before the journal")

    monkeypatch.setattr(ckpt, "write_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, *weights_and_moments(1), make_state(step=4))
    monkeypatch.setattr(ckpt, "write_atomic", real_write_atomic)
    state = ckpt.load_state(tmp_path)
    assert state.step == 3
    loaded = ckpt.load_weights(tmp_path, state)
    assert all(np.array_equal(loaded[n], a) for n, a in weights.items())


def test_metrics_append_read_and_truncate(tmp_path):
    for step in (1, 2, 3):
        ckpt.append_metrics(tmp_path, {"step": step, "loss": 1.0 / step})
    with open(tmp_path / ckpt.METRICS_FILE, "a") as f:
        f.write('{"step": 4, "lo')  # a torn last line
    assert [r["step"] for r in ckpt.read_metrics(tmp_path)] == [1, 2, 3]
    ckpt.truncate_metrics(tmp_path, 2)
    assert [r["step"] for r in ckpt.read_metrics(tmp_path)] == [1, 2]
