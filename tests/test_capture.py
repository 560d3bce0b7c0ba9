"""Backend.capture / replay: recorded device work re-runs on new input contents, and the model's
cached forward replays at another position when its position tensor is rewritten."""

from __future__ import annotations

import numpy as np
import pytest

from femto.errors import ConfigError, ShapeError
from femto.graph import Tensor, no_grad
from femto.model import GPT, GPTConfig
from femto.ops import attention_cached, gelu, matmul


def test_replay_recomputes_from_new_inputs(backend):
    rng = np.random.default_rng(0)
    x = Tensor.from_numpy(rng.standard_normal((5, 4)).astype(np.float32), backend)
    w = Tensor.from_numpy(rng.standard_normal((3, 4)).astype(np.float32), backend)
    scratch = Tensor.zeros((5, 3), backend)
    with no_grad(), backend.capture() as plan:
        y = gelu(matmul(x, w))
        backend.copy_(scratch.data, y.data)  # copies and fills are recorded too
        backend.zero_(y.data)
    assert len(plan) >= 4
    for _ in range(2):
        new_x = rng.standard_normal((5, 4)).astype(np.float32)
        x.copy_from_numpy(new_x)
        backend.replay(plan)
        with no_grad():
            want = gelu(matmul(Tensor.from_numpy(new_x, backend), w)).numpy()
        np.testing.assert_array_equal(scratch.numpy(), want)
        np.testing.assert_array_equal(y.numpy(), np.zeros((5, 3), np.float32))


def test_capture_refuses_readback_and_nesting(backend):
    t = Tensor.zeros((2,), backend)
    with pytest.raises(RuntimeError, match="read back inside capture"), backend.capture():
        t.numpy()
    with pytest.raises(RuntimeError, match="do not nest"), backend.capture(), backend.capture():
        pass
    t.numpy()  # after the block, reading back works again


def test_captured_pool_buffers_are_not_handed_out_again(cpu_backend):
    x = Tensor.from_numpy(np.ones((4, 4), np.float32), cpu_backend)
    with no_grad(), cpu_backend.capture() as plan:
        inner = gelu(x)
        kept = inner.data
        del inner  # dies inside the plan: its buffer must stay the plan's
    fresh = [Tensor.empty((4, 4), cpu_backend) for _ in range(4)]
    assert all(t.data is not kept for t in fresh)
    assert len(plan) == 1


CFG = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8)


def test_cached_step_replays_at_other_positions(backend):
    model = GPT(CFG, backend, np.random.default_rng(0))
    seq = [3, 1, 4, 1, 5, 9, 2]
    with no_grad():
        reference = model.forward_cached(np.array([seq], np.int32), model.new_cache(1)).numpy()
        cache = model.new_cache(1)
        model.forward_cached(np.array([seq[:2]], np.int32), cache)
        ids = Tensor.from_numpy(np.array([[seq[2]]], np.int32), backend)
        positions = Tensor.from_numpy(np.array([2], np.int32), backend)
        with backend.capture() as plan:
            out = model.forward_cached(ids, cache, positions=positions)
        got = [out.numpy()[0, 0]]
        for pos in range(3, len(seq)):
            ids.copy_from_numpy(np.array([[seq[pos]]], np.int32))
            positions.copy_from_numpy(np.array([pos], np.int32))
            backend.replay(plan)
            got.append(out.numpy()[0, 0])
    np.testing.assert_allclose(np.array(got), reference[0, 2:], rtol=1e-5, atol=1e-6)


def test_cached_forward_checks_its_positions(cpu_backend):
    model = GPT(CFG, cpu_backend, np.random.default_rng(0))
    ids = np.array([[1, 2]], np.int32)
    with no_grad():
        cache = model.new_cache(1)
        wrong = Tensor.from_numpy(np.array([1, 2], np.int32), cpu_backend)
        with pytest.raises(
            ConfigError, match=r"positions must hold 0..1 as \(2,\), got \(2,\) holding \(1, 2\)"
        ):
            model.forward_cached(ids, cache, positions=wrong)
        cache.length = 7
        late = Tensor.from_numpy(np.array([7, 8], np.int32), cpu_backend)
        with pytest.raises(ConfigError, match="exceeds block_size 8"):
            model.forward_cached(ids, cache, positions=late)
        qkv = Tensor.zeros((1, 2, 12), cpu_backend)
        kv = Tensor.zeros((1, 2, 4, 2), cpu_backend)
        with pytest.raises(ShapeError, match=r"need positions int32 \(2,\) holding 1..2"):
            attention_cached(
                qkv, kv, kv, 2, 1, Tensor.from_numpy(np.array([0, 1], np.int32), cpu_backend)
            )


def test_a_plan_reuses_its_own_dead_buffers_and_never_lends_them(cpu_backend):
    x = Tensor.from_numpy(np.ones(7, np.float32), cpu_backend)
    with no_grad(), cpu_backend.capture() as plan:
        first = gelu(x)
        first_id = id(first.data)
        del first  # dies inside the capture: back to the plan's own free list
        second = gelu(x)
    assert id(second.data) == first_id  # reused within the plan, as the graph would
    del second  # dies after the capture: the plan still uses it, so no pool may hand it out
    later = [Tensor.empty((7,), cpu_backend) for _ in range(3)]
    assert not any(id(t.data) in plan.keep for t in later)


TRAIN_CFG = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def _batches(n):
    rng = np.random.default_rng(3)
    windows = rng.integers(0, 11, (n, 4, 9)).astype(np.int32)
    return [(w[:, :-1].copy(), w[:, 1:].copy()) for w in windows]


def test_replayed_training_steps_match_the_graph_bit_for_bit(backend):
    from femto.optim import AdamW
    from femto.train import TrainStep

    graph_model = GPT(TRAIN_CFG, backend, np.random.default_rng(0))
    replay_model = GPT(TRAIN_CFG, backend, np.random.default_rng(0))
    graph_opt, replay_opt = AdamW(graph_model.params), AdamW(replay_model.params)
    step, rng = TrainStep(replay_model), np.random.default_rng(0)
    for x, y in _batches(4):
        _, loss = graph_model(x, y)
        loss.backward()
        assert step(x, y, rng) == loss.item()
        for model, opt in ((graph_model, graph_opt), (replay_model, replay_opt)):
            opt.step()
            model.zero_grad()
    for name, p in graph_model.params.items():
        np.testing.assert_array_equal(replay_model.params[name].numpy(), p.numpy(), err_msg=name)


def test_a_replayed_step_still_rejects_bad_ids(cpu_backend):
    from femto.errors import TokenIdError
    from femto.train import TrainStep

    model = GPT(TRAIN_CFG, cpu_backend, np.random.default_rng(0))
    step, rng = TrainStep(model), np.random.default_rng(0)
    (x, y), (x2, y2) = _batches(2)
    step(x, y, rng)  # captured
    x2[1, 3] = 11
    with pytest.raises(TokenIdError, match="token id 11"):
        step(x2, y2, rng)
    y2[0, 0] = -1
    x2[1, 3] = 0
    with pytest.raises(TokenIdError, match="target id -1"):
        step(x2, y2, rng)


def test_replayed_dropout_steps_draw_fresh_masks_as_the_graph_does(backend):
    from dataclasses import replace

    from femto.optim import AdamW
    from femto.train import TrainStep

    cfg = replace(TRAIN_CFG, dropout=0.5)
    graph_model = GPT(cfg, backend, np.random.default_rng(0))
    replay_model = GPT(cfg, backend, np.random.default_rng(0))
    graph_opt, replay_opt = AdamW(graph_model.params), AdamW(replay_model.params)
    step = TrainStep(replay_model)
    graph_rng, replay_rng = np.random.default_rng(4), np.random.default_rng(4)
    (x, y), _ = _batches(2)
    losses = []
    for _ in range(3):  # one batch: only the masks (and the updates) change the loss
        _, loss = graph_model(x, y, graph_rng)
        loss.backward()
        losses.append(step(x, y, replay_rng))
        assert losses[-1] == loss.item()
        for model, opt in ((graph_model, graph_opt), (replay_model, replay_opt)):
            opt.step()
            model.zero_grad()
    assert len(set(losses)) == 3
    for name, p in graph_model.params.items():
        np.testing.assert_array_equal(replay_model.params[name].numpy(), p.numpy(), err_msg=name)


def test_a_step_captured_before_the_optimizer_packs_the_parameters_captures_again(cpu_backend):
    from femto.optim import AdamW
    from femto.train import TrainStep

    graph_model = GPT(TRAIN_CFG, cpu_backend, np.random.default_rng(0))
    replay_model = GPT(TRAIN_CFG, cpu_backend, np.random.default_rng(0))
    step, rng = TrainStep(replay_model), np.random.default_rng(0)
    (x, y), (x2, y2) = _batches(2)
    step(x, y, rng)  # captured on the parameters' first buffers, with fresh gradients
    _, loss = graph_model(x, y)
    loss.backward()
    graph_opt, replay_opt = AdamW(graph_model.params), AdamW(replay_model.params)  # packs them
    for opt in (graph_opt, replay_opt):
        opt.step()
    for model in (graph_model, replay_model):
        model.zero_grad()
    _, loss = graph_model(x2, y2)
    loss.backward()
    assert step(x2, y2, rng) == loss.item()
    for name, p in graph_model.params.items():
        np.testing.assert_array_equal(replay_model.params[name].grad.numpy(), p.grad.numpy())


def test_a_capture_records_only_its_own_thread(cpu_backend):
    import threading

    x = Tensor.from_numpy(np.ones(7, np.float32), cpu_backend)
    other_done = threading.Event()

    def other_thread() -> None:
        with no_grad():
            gelu(x)
        other_done.set()

    with no_grad(), cpu_backend.capture() as plan:
        gelu(x)
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert other_done.is_set() and len(plan) == 1


def test_a_replayed_step_refuses_ids_that_do_not_fit_int32(cpu_backend):
    from femto.errors import TokenIdError
    from femto.train import TrainStep

    model = GPT(TRAIN_CFG, cpu_backend, np.random.default_rng(0))
    step, rng = TrainStep(model), np.random.default_rng(0)
    (x, y), (x2, y2) = _batches(2)
    step(x, y, rng)  # captured
    wide = x2.astype(np.int64)
    wide[0, 0] = 2**32 + 1  # would wrap to 1, a valid id
    with pytest.raises(TokenIdError, match="does not fit int32"):
        step(wide, y2, rng)
