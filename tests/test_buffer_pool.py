"""The CPU backend's buffer pool: a dead tensor's buffer serves the next allocation of its size, but
never while another owner (a tensor sharing it, a kernel plan) still holds it; ownership is counted
explicitly (own/retain/release), not read from the interpreter; a training step allocates nothing."""

from __future__ import annotations

import gc
import weakref

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


def test_buffer_with_another_owner_is_not_reused():
    backend = CPUBackend()
    t = Tensor.empty((7,), backend)
    held = t.data
    backend.retain(held)  # a second owner, as a tensor sharing the buffer takes
    held[:] = 3.0
    del t
    u = Tensor.zeros((7,), backend)
    assert u.data is not held
    assert (held == 3.0).all()
    backend.release(held)  # the last owner: now it is free
    assert Tensor.empty((7,), backend).data is held


def test_reshaped_tensor_keeps_the_buffer_after_the_original_dies():
    backend = CPUBackend()
    t = Tensor.from_numpy(np.arange(6, dtype=np.float32), backend)
    x = Tensor.empty((2, 3), backend)
    backend.copy_(x.data, t.data)
    flat = x.reshaped((6,))
    del x
    others = [Tensor.zeros((2, 3), backend) for _ in range(3)]  # would take a freed buffer
    assert all(o.data is not flat.data for o in others)
    assert flat.numpy().tolist() == list(range(6))
    address = flat.data.ctypes.data
    del flat
    assert Tensor.empty((6,), backend).data.ctypes.data == address


def test_release_counts_owners_not_python_references():
    # the pool never asks the interpreter how many references a buffer has: extra references
    # (a debugger, a list) change nothing, and each owner releases exactly once
    backend = CPUBackend()
    t = Tensor.empty((5,), backend)
    buf = t.data
    extra = [buf, buf, buf]
    del t
    assert Tensor.empty((5,), backend).data is buf  # the only owner died: reused, as contracted
    backend.release(np.zeros(5, np.float32))  # never pooled: ignored
    backend.retain(np.zeros(5, np.float32))
    assert len(extra) == 3


def test_a_buffer_a_plan_uses_never_returns_to_the_shared_pool():
    backend = CPUBackend()
    with backend.capture() as plan:
        t = Tensor.zeros((9,), backend)  # zero_ records a fill of it
    buf = t.data
    del t
    assert all(Tensor.empty((9,), backend).data is not buf for _ in range(3))
    assert len(plan) == 1


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


def test_buffers_nobody_owns_are_neither_pooled_nor_kept_alive():
    backend = CPUBackend()
    scratch = backend.zeros(5)  # raw buffers (the optimizer's storage, a test's scratch)
    gone = weakref.ref(scratch)
    backend.release(scratch)  # not owned: ignored, never pooled
    assert Tensor.empty((5,), backend).data is not scratch
    del scratch
    gc.collect()
    assert gone() is None  # the backend keeps no reference to what it does not own
