"""gelu (tanh approximation): reference vs finite differences, every backend vs reference over a wide
input range, dtype errors. Tolerances: forward 1e-4, backward 1e-3 relative."""

import numpy as np
import pytest
import reference as ref
from gradcheck import assert_close, check_directional, numeric_gradient, run_op
from hypothesis import given
from hypothesis import strategies as st

from femto.errors import ShapeError
from femto.graph import Tensor
from femto.ops import gelu, matmul

ODD = st.sampled_from([1, 3, 7, 17, 127]) | st.integers(1, 40)


def test_reference_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    x, r = rng.standard_normal((3, 5)) * 3, rng.standard_normal((3, 5))
    numeric = numeric_gradient(lambda x_: np.sum(ref.gelu_forward(x_) * r), x)
    assert np.allclose(ref.gelu_backward(r, x), numeric)


def test_reference_known_values():
    # GELU(0) = 0, GELU(x) -> x for large x, -> 0 for very negative x
    assert ref.gelu_forward(np.array([0.0, 10.0, -10.0])) == pytest.approx(
        [0.0, 10.0, 0.0], abs=1e-12
    )


@given(
    shape=st.tuples(ODD) | st.tuples(ODD, ODD),
    scale=st.sampled_from([0.1, 1.0, 5.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(backend, shape, scale, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    out, (dx,) = run_op(backend, gelu, [x], (0,), dout)
    # GELU(-15) is 0 in float64, but float32 0.5 x (1 + tanh u) keeps ~|x| 1e-7 of 1 + tanh u: a few
    # 1e-7 absolute, which matters only when every element of a small tensor is that far negative
    assert_close(out, ref.gelu_forward(x.astype(float)), 1e-4, "forward", atol=1e-5)
    assert_close(dx, ref.gelu_backward(dout.astype(float), x.astype(float)), 1e-3, "dinp")


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 17), (127, 3)])
def test_directional_derivative(backend, rng, shape):
    check_directional(backend, gelu, [rng.standard_normal(shape) * 2], (0,), rng)


def test_int_input_is_rejected(backend):
    with pytest.raises(ShapeError, match=r"int32 of shape \(3,\)"):
        gelu(Tensor.from_numpy(np.arange(3, dtype=np.int32), backend))


@pytest.mark.parametrize("N", [1, 17, 1000])
def test_backward_kernel_overwrites_or_accumulates(backend, rng, N):
    # accumulate=0 must never read dinp (the graph hands it uninitialised): NaNs there stay out
    x = (rng.standard_normal(N) * 3).astype(np.float32)
    dout = rng.standard_normal(N).astype(np.float32)
    expected = ref.gelu_backward(dout.astype(float), x.astype(float))
    for accumulate, start in ((0, np.full(N, np.nan, np.float32)), (1, np.ones(N, np.float32))):
        dinp = backend.from_numpy(start)
        xb, doutb = backend.from_numpy(x), backend.from_numpy(dout)
        backend.run("gelu_backward", dinp, doutb, xb, N=N, accumulate=accumulate)
        got = backend.to_numpy(dinp).astype(np.float64)
        assert_close(got, expected + accumulate, 1e-3, f"dinp (accumulate={accumulate})")


def test_backward_in_place_inside_a_graph(backend, rng):
    # gelu between two matmuls, as in the MLP: its dout is the fresh gradient matmul overwrote, and
    # its dinp the fresh one the next matmul reads; the chain rule must come out the same
    xs, ws, w2s = (
        rng.standard_normal((6, 4)),
        rng.standard_normal((5, 4)),
        rng.standard_normal((3, 5)),
    )
    x, w, w2 = (
        Tensor.from_numpy(a.astype(np.float32), backend, requires_grad=True) for a in (xs, ws, w2s)
    )
    y = matmul(gelu(matmul(x, w)), w2)
    dys = rng.standard_normal((6, 3))
    y.backward(Tensor.from_numpy(dys.astype(np.float32), backend))
    hs = xs @ ws.T
    dh = ref.gelu_backward(dys @ w2s, hs)
    assert_close(x.grad.numpy(), dh @ ws, 1e-4, "dx")
    assert_close(w.grad.numpy(), dh.T @ xs, 1e-4, "dw")
    assert_close(w2.grad.numpy(), dys.T @ ref.gelu_forward(hs), 1e-4, "dw2")


def test_extreme_inputs(backend):
    # far beyond the range where GELU is x or 0 (and its slope 1 or 0) to float precision
    x = np.array([-1e12, -1e9, -1e4, -100.0, -20.0, -9.7, 9.7, 20.0, 1e4, 1e12, np.nan], np.float32)
    out, (dx,) = run_op(backend, gelu, [x], (0,), np.ones_like(x))
    expected = np.where(x > 0, x, 0.0)
    np.testing.assert_allclose(out[:-1], expected[:-1], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(dx[:-1], (x[:-1] > 0).astype(np.float32), atol=1e-5)
    assert np.isnan(out[-1]) and np.isnan(dx[-1])  # a NaN is not hidden
