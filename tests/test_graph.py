"""The autograd graph (femto/graph.py): topological order, gradient accumulation for tensors used
twice, no_grad, scalar-only backward, zeroing and freeing gradients, deep chains, and the per-op
gradient shape assertion. Runs on the CPU backend; the graph is the same code for every backend."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from gradcheck import assert_close

from femto.errors import BackendMismatch, ShapeError, TokenIdError
from femto.graph import Op, Tensor, backward, grad_enabled, no_grad, topological_order
from femto.ops import add, cross_entropy, embedding, gelu, matmul


def leaf(backend, array, requires_grad=True) -> Tensor:
    return Tensor.from_numpy(np.asarray(array, np.float32), backend, requires_grad=requires_grad)


def ones_like(t: Tensor) -> Tensor:
    return Tensor.from_numpy(np.ones(t.shape, np.float32), t.backend)


def test_topological_order_puts_inputs_before_outputs(cpu_backend, rng):
    x = leaf(cpu_backend, rng.standard_normal((2, 3)))
    w = leaf(cpu_backend, rng.standard_normal((4, 3)))
    h = matmul(x, w)
    g = gelu(h)
    y = add(g, h)  # h feeds two consumers
    order = topological_order(y)
    position = {id(t): i for i, t in enumerate(order)}
    assert len(order) == len(position) == 5  # each tensor once
    for node in order:
        if node.op is not None:
            inputs = [i for i in node.op.inputs if i is not None]  # matmul's bias may be None
            assert all(position[id(i)] < position[id(node)] for i in inputs)
    assert order[-1] is y


def test_residual_use_accumulates(cpu_backend, rng):
    """y = gelu(x) + x: dx must be gelu'(x) + 1, the sum over both paths."""
    xs = rng.standard_normal((3, 5))
    x = leaf(cpu_backend, xs)
    add(gelu(x), x).backward(ones_like(x))
    t = np.tanh(np.sqrt(2 / np.pi) * (xs + 0.044715 * xs**3))
    dgelu = 0.5 * (1 + t) + 0.5 * xs * (1 - t * t) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * xs**2)
    assert_close(x.grad.numpy(), dgelu + 1.0, 1e-5, "dx")


def test_tied_weights_accumulate(cpu_backend, rng):
    """GPT-2 ties wte to the output head: the table gets embedding's and matmul's gradients."""
    ids = Tensor.from_numpy(np.array([[1, 2, 1]], np.int32), cpu_backend)
    ws = rng.standard_normal((4, 3))
    w = leaf(cpu_backend, ws)
    logits = matmul(embedding(ids, w), w)  # (1, 3, 4)
    dlogits = rng.standard_normal((1, 3, 4)).astype(np.float32)
    logits.backward(Tensor.from_numpy(dlogits, cpu_backend))
    h = ws[[1, 2, 1]]  # (3, C)
    g = dlogits[0].astype(np.float64)  # (3, V)
    want = g.T @ h  # from the head
    np.add.at(want, [1, 2, 1], g @ ws)  # from the lookup
    assert_close(w.grad.numpy(), want, 1e-5, "dweight")


def test_gradients_accumulate_across_backward_calls_until_zeroed(cpu_backend, rng):
    x = leaf(cpu_backend, rng.standard_normal(4))
    gelu(x).backward(ones_like(x))
    first, once = x.grad, x.grad.numpy()
    gelu(x).backward(ones_like(x))  # a second pass adds into the same buffer
    assert x.grad is first
    np.testing.assert_array_equal(x.grad.numpy(), 2 * once)
    buffer = x.grad.data
    x.zero_grad()
    assert x.grad is first and x.grad.data is buffer  # zeroed in place, buffer kept for next step
    assert not x.grad.numpy().any()
    x.free_grad()
    assert x.grad is None
    x.zero_grad()  # no gradient: nothing to do, no error


def test_gradient_sums_two_backward_passes(cpu_backend, rng):
    xs = rng.standard_normal(5)
    x = leaf(cpu_backend, xs)
    add(x, x).backward(ones_like(x))
    add(x, x).backward(ones_like(x))
    np.testing.assert_array_equal(x.grad.numpy(), np.full(5, 4.0, np.float32))


def test_no_grad_records_nothing(cpu_backend, rng):
    x = leaf(cpu_backend, rng.standard_normal((2, 3)))
    w = leaf(cpu_backend, rng.standard_normal((4, 3)))
    assert grad_enabled()
    with no_grad():
        assert not grad_enabled()
        y = gelu(matmul(x, w))
    assert grad_enabled()
    assert y.op is None and not y.requires_grad
    with pytest.raises(ShapeError, match="not produced by a recorded op"):
        y.backward(ones_like(y))


def test_no_grad_restores_state_after_an_exception(cpu_backend):
    with pytest.raises(RuntimeError), no_grad():
        raise RuntimeError("boom")
    assert grad_enabled()


def test_inputs_without_requires_grad_are_not_recorded(cpu_backend, rng):
    x = leaf(cpu_backend, rng.standard_normal(3), requires_grad=False)
    y = gelu(x)
    assert y.op is None and not y.requires_grad


def test_backward_needs_a_scalar(cpu_backend, rng):
    x = leaf(cpu_backend, rng.standard_normal((2, 3)))
    y = gelu(x)
    with pytest.raises(ShapeError, match=r"\(2, 3\)"):
        y.backward()
    with pytest.raises(ShapeError, match=r"\(3,\)"):
        backward(y, Tensor.zeros((3,), cpu_backend))


def test_scalar_loss_seeds_one(cpu_backend, rng):
    logits = leaf(cpu_backend, rng.standard_normal((3, 5)))
    targets = Tensor.from_numpy(np.array([0, 4, 2], np.int32), cpu_backend)
    cross_entropy(logits, targets).backward()
    np.testing.assert_allclose(logits.grad.numpy().sum(axis=1), 0.0, atol=1e-6)
    assert logits.grad.numpy()[0, 0] < 0


def test_graph_is_freed_after_backward(cpu_backend, rng):
    x = leaf(cpu_backend, rng.standard_normal(3))
    h = gelu(x)
    y = gelu(h)
    y.backward(ones_like(y))
    assert h.op is None and h.grad is None and y.op is None  # activations and intermediate grads
    assert x.grad is not None


def test_deep_chain_does_not_recurse(cpu_backend):
    depth = sys.getrecursionlimit() + 500
    x = leaf(cpu_backend, np.full(2, 0.5))
    zero = leaf(cpu_backend, np.zeros(2), requires_grad=False)
    y = x
    for _ in range(depth):
        y = add(y, zero)
    assert len(topological_order(y)) == depth + 1
    y.backward(ones_like(y))
    np.testing.assert_array_equal(x.grad.numpy(), np.ones(2, np.float32))


class _BadShapeOp(Op):
    """Returns a gradient of the wrong shape, as a buggy op would."""

    kernels = ()

    def forward(self, x: Tensor) -> Tensor:
        out = self.output(x.shape)
        self.backend.copy_(out.data, x.data)
        return out

    def backward(self, dout: Tensor) -> tuple:
        return (Tensor.zeros(tuple(d + 1 for d in self.inputs[0].shape), self.backend),)


def test_gradient_shape_assertion_names_the_op(cpu_backend, rng):
    x = leaf(cpu_backend, rng.standard_normal((2, 3)))
    y = _BadShapeOp(cpu_backend)(x)
    with pytest.raises(AssertionError, match=r"_BadShapeOp.*\(3, 4\).*\(2, 3\)"):
        y.backward(ones_like(y))


def test_ops_refuse_inputs_from_two_backends(cpu_backend, rng):
    from femto.backend.cpu import CPUBackend

    a = leaf(cpu_backend, rng.standard_normal(3))
    b = leaf(CPUBackend(), rng.standard_normal(3))
    with pytest.raises(BackendMismatch, match="different backends"):
        add(a, b)


def _dgelu(h: np.ndarray) -> np.ndarray:
    t = np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3))
    return 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * h**2)


def test_handed_over_and_overwritten_gradients_sum_every_path(cpu_backend, rng):
    """Fresh gradients skip their zero-fill: add hands dout over to `a` (and shares it with `b`),
    matmul and gelu overwrite a fresh dinp. Later paths into the same tensor must still add up:
    h feeds two matmuls and a gelu, u feeds both sides of one add."""
    xs, ws = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    w2s, w3s = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
    x, w, w2, w3 = (leaf(cpu_backend, a) for a in (xs, ws, w2s, w3s))
    h = matmul(x, w)  # (4, 5)
    u = add(add(matmul(h, w2), matmul(h, w3)), gelu(h))  # (4, 5)
    out = add(u, u)
    g = rng.standard_normal((4, 5)).astype(np.float32)
    seed = Tensor.from_numpy(g, cpu_backend)
    out.backward(seed)
    np.testing.assert_array_equal(seed.numpy(), g)  # the caller's seed is never written into
    hs = xs @ ws.T
    du = 2 * g.astype(np.float64)
    dh = du @ w2s + du @ w3s + du * _dgelu(hs)
    assert_close(x.grad.numpy(), dh @ ws, 1e-4, "dx")
    assert_close(w.grad.numpy(), dh.T @ xs, 1e-4, "dw")
    assert_close(w2.grad.numpy(), du.T @ hs, 1e-4, "dw2")


def test_handed_over_gradient_is_not_shared_with_a_leaf(cpu_backend, rng):
    """A leaf never receives dout's buffer itself: its .grad outlives the graph."""
    a, b = leaf(cpu_backend, rng.standard_normal(6)), leaf(cpu_backend, rng.standard_normal(6))
    y = add(a, b)
    y.backward(ones_like(y))
    assert a.grad is not b.grad and a.grad.data is not b.grad.data
    a.grad.data[:] = 5.0  # writing one leaf's gradient leaves the other's alone
    np.testing.assert_array_equal(b.grad.numpy(), np.ones(6))


def test_gradient_shared_by_both_inputs_of_an_add_is_copied_before_a_write(cpu_backend, rng):
    """z = h + h @ w2^T hands dout to both h and the branch; the branch's matmul then adds into h's
    gradient while its GEMM still reads that same dout: h must get a private copy first. The second
    level (y = z + gelu(z)) shares a gradient that was itself passed on."""
    xs, ws, w2s = (rng.standard_normal(s) for s in ((3, 4), (5, 4), (5, 5)))
    x, w, w2 = leaf(cpu_backend, xs), leaf(cpu_backend, ws), leaf(cpu_backend, w2s)
    h = matmul(x, w)
    z = add(h, matmul(h, w2))
    y = add(z, gelu(z))
    dys = rng.standard_normal((3, 5))
    y.backward(Tensor.from_numpy(dys.astype(np.float32), cpu_backend))
    hs = xs @ ws.T
    zs = hs + hs @ w2s.T
    dz = dys * (1 + _dgelu(zs))
    dh = dz + dz @ w2s
    assert_close(x.grad.numpy(), dh @ ws, 1e-4, "dx")
    assert_close(w.grad.numpy(), dh.T @ xs, 1e-4, "dw")
    assert_close(w2.grad.numpy(), dz.T @ hs, 1e-4, "dw2")


@pytest.mark.parametrize("bad", [2**31, 2**32 + 1, -(2**31) - 1])
def test_ids_that_do_not_fit_int32_are_refused_not_wrapped(backend, bad):
    with pytest.raises(TokenIdError, match=f"id {bad} in an array of shape \\(2,\\)"):
        Tensor.from_numpy(np.array([bad, 3], np.int64), backend)
    largest = Tensor.from_numpy(np.array([2**31 - 1, 3], np.int64), backend)
    assert largest.value_range == (3, 2**31 - 1)
