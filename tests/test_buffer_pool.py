"""The CPU backend's buffer pool: a dead tensor's buffer serves the next allocation of its size, but
never while anything else still holds it, and a training step reuses rather than allocates."""

from __future__ import annotations

import numpy as np

from femto.backend.cpu import CPUBackend
from femto.graph import Tensor
from femto.model import GPT, GPTConfig
from femto.optim import AdamW


def test_dead_tensor_buffer_is_reused_for_the_same_size():
    backend = CPUBackend()
    t = Tensor.empty((5, 3), backend)
    address = t.data.ctypes.data
    del t
    assert Tensor.zeros((15,), backend).data.ctypes.data == address
    assert not Tensor.zeros((15,), backend).numpy().any()  # zeros() clears a recycled buffer


def test_buffer_still_held_elsewhere_is_not_reused():
    backend = CPUBackend()
    t = Tensor.empty((7,), backend)
    held = t.data
    held[:] = 3.0
    del t
    u = Tensor.zeros((7,), backend)
    assert u.data is not held
    assert (held == 3.0).all()


def test_tensors_the_caller_keeps_survive_later_steps():
    backend = CPUBackend()
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    model = GPT(config, backend, np.random.default_rng(0))
    optimizer = AdamW(model.params)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))
    logits, loss = model(x, y)
    kept = logits.numpy()
    loss.backward()
    optimizer.step()
    model.zero_grad()
    for _ in range(2):
        _, later = model(x, y)
        later.backward()
        model.zero_grad()
    assert np.array_equal(logits.numpy(), kept)


def test_steady_training_steps_allocate_nothing_new():
    backend = CPUBackend()
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
    model = GPT(config, backend, np.random.default_rng(0))
    optimizer = AdamW(model.params)
    rng = np.random.default_rng(1)

    def step() -> None:
        _, loss = model(rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8)))
        loss.backward()
        optimizer.step()
        model.zero_grad()

    step()
    step()
    pooled = {key: len(free) for key, free in backend._free.items()}
    assert sum(pooled.values()) > 0  # the buffers of a step's dead tensors came back
    step()
    assert {key: len(free) for key, free in backend._free.items()} == pooled
