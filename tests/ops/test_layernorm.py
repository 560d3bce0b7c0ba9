"""layernorm over the last axis: reference vs finite differences, every backend vs reference (bias and
no bias), bad shapes. Tolerances: forward 1e-4, backward 1e-3 relative."""

import numpy as np
import pytest
import reference as ref
from gradcheck import assert_close, check_directional, numeric_gradient, run_op
from hypothesis import given
from hypothesis import strategies as st

from femto.errors import ShapeError
from femto.graph import Tensor
from femto.ops import layernorm

ODD = st.sampled_from([1, 3, 7, 17, 127]) | st.integers(1, 40)


@pytest.mark.parametrize("bias", [True, False])
def test_reference_gradients_match_finite_differences(bias):
    rng = np.random.default_rng(0)
    x, w, r = rng.standard_normal((2, 3, 6)), rng.standard_normal(6), rng.standard_normal((2, 3, 6))
    b = rng.standard_normal(6) if bias else None
    dx, dw, db = ref.layernorm_backward(r, x, w, b)
    loss = lambda x_, w_, b_: np.sum(ref.layernorm_forward(x_, w_, b_) * r)
    assert np.allclose(dx, numeric_gradient(lambda x_: loss(x_, w, b), x), atol=1e-7)
    assert np.allclose(dw, numeric_gradient(lambda w_: loss(x, w_, b), w), atol=1e-7)
    if bias:
        assert np.allclose(db, numeric_gradient(lambda b_: loss(x, w, b_), b), atol=1e-7)
    else:
        assert db is None


@given(
    lead=st.sampled_from([(), (2,), (2, 3)]),
    N=ODD,
    C=ODD,
    bias=st.booleans(),
    offset=st.sampled_from([0.0, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(backend, lead, N, C, bias, offset, seed):
    # offset moves every row's mean away from 0, where a one-pass variance would cancel
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((*lead, N, C)) + offset).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32) if bias else None
    dout = rng.standard_normal(x.shape).astype(np.float32)
    x64, w64, b64 = x.astype(float), w.astype(float), None if b is None else b.astype(float)
    grad_args = (0, 1, 2) if bias else (0, 1)
    out, grads = run_op(backend, layernorm, [x, w, b], grad_args, dout)
    assert_close(out, ref.layernorm_forward(x64, w64, b64), 1e-4, "forward")
    expected = ref.layernorm_backward(dout.astype(float), x64, w64, b64)
    for name, got, want in zip(("dinp", "dweight", "dbias"), grads, expected):
        assert (got is None) == (want is None), name
        if want is not None:
            assert_close(got, want, 1e-3, name)


def test_single_channel_rows_normalise_to_exactly_zero(backend):
    # at C = 1 every row is its own mean: the output is the bias and dinp is 0, exactly, on any driver
    # (the mean must not come from a division a driver may round loosely)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((9, 1)) * 100 + 3).astype(np.float32)
    w, b = rng.standard_normal(1).astype(np.float32), rng.standard_normal(1).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    out, (dx, _, db) = run_op(backend, layernorm, [x, w, b], (0, 1, 2), dout)
    assert np.array_equal(out, np.broadcast_to(b, x.shape))
    assert np.array_equal(dx, np.zeros_like(x))
    assert np.allclose(db, dout.sum(0), rtol=1e-6)


@pytest.mark.parametrize("N,C", [(1000, 3), (4099, 17), (300, 130)])
@pytest.mark.parametrize("which", ["both", "dweight", "dbias"])
def test_parameter_gradients_over_many_rows_accumulate(backend, rng, N, C, which):
    # many rows: the OpenCL column sums split into partials; each gradient asked for adds its sum
    x, w = rng.standard_normal((N, C)), rng.standard_normal(C)
    b, dout = rng.standard_normal(C), rng.standard_normal((N, C))
    _, dw, db = ref.layernorm_backward(dout, x, w, b)
    mean, rstd = x.mean(1), 1 / np.sqrt(x.var(1) + 1e-5)
    up = lambda a: backend.from_numpy(np.ascontiguousarray(a, np.float32).reshape(-1))  # noqa: E731
    dweight = up(np.ones(C)) if which != "dbias" else None
    dbias = up(np.ones(C)) if which != "dweight" else None
    inputs = [up(a) for a in (dout, x, w, mean, rstd)]
    backend.run("layernorm_backward", None, dweight, dbias, *inputs, N=N, C=C)
    if dweight is not None:
        assert_close(backend.to_numpy(dweight).astype(np.float64), dw + 1, 1e-3, "dweight")
    if dbias is not None:
        assert_close(backend.to_numpy(dbias).astype(np.float64), db + 1, 1e-3, "dbias")


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (2, 3, 17), (3, 127)])
@pytest.mark.parametrize("bias", [True, False])
def test_directional_derivative(backend, rng, shape, bias):
    C = shape[-1]
    arrays = [
        rng.standard_normal(shape),
        rng.standard_normal(C),
        rng.standard_normal(C) if bias else None,
    ]
    check_directional(backend, layernorm, arrays, (0, 1, 2) if bias else (0, 1), rng)


@pytest.mark.parametrize("w_shape,b_shape", [((5,), (4,)), ((4,), (5,)), ((4, 1), None)])
def test_bad_shapes_raise_with_both_shapes(backend, w_shape, b_shape):
    x = Tensor.zeros((3, 4), backend)
    b = Tensor.zeros(b_shape, backend) if b_shape else None
    with pytest.raises(ShapeError) as info:
        layernorm(x, Tensor.zeros(w_shape, backend), b)
    bad = w_shape if w_shape != (4,) else b_shape
    assert "(3, 4)" in str(info.value) and str(bad) in str(info.value)


def test_no_channels_is_a_shape_error(backend):
    with pytest.raises(ShapeError, match=r"layernorm: inp \(3, 0\) .*C must be >= 1"):
        layernorm(Tensor.zeros((3, 0), backend), Tensor.zeros((0,), backend))
