"""add with broadcasting of b over a's leading axes: reference vs finite differences, every backend vs
reference, bad shapes. Tolerances: forward 1e-4, backward 1e-3 relative."""

import numpy as np
import pytest
import reference as ref
from gradcheck import assert_close, check_directional, numeric_gradient, run_op
from hypothesis import given
from hypothesis import strategies as st

from femto.errors import ShapeError
from femto.graph import Tensor
from femto.ops import add

ODD = st.sampled_from([1, 3, 7, 17, 127]) | st.integers(1, 40)


def test_reference_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    a, b, r = (
        rng.standard_normal((2, 3, 4)),
        rng.standard_normal((3, 4)),
        rng.standard_normal((2, 3, 4)),
    )
    da, db = ref.add_backward(r, b.shape)
    assert np.allclose(da, numeric_gradient(lambda a_: np.sum(ref.add_forward(a_, b) * r), a))
    assert np.allclose(db, numeric_gradient(lambda b_: np.sum(ref.add_forward(a, b_) * r), b))


@given(lead=st.sampled_from([(), (1,), (2,), (3, 2)]), T=ODD, C=ODD, seed=st.integers(0, 2**16))
def test_matches_reference(backend, lead, T, C, seed):
    """b is (T, C) under a (*lead, T, C): the plain residual add when lead is (), else a broadcast
    position table; the bias case (C) is covered by test_bias_broadcast."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((*lead, T, C)).astype(np.float32)
    b = rng.standard_normal((T, C)).astype(np.float32)
    dout = rng.standard_normal(a.shape).astype(np.float32)
    out, (da, db) = run_op(backend, add, [a, b], (0, 1), dout)
    assert_close(out, ref.add_forward(a.astype(float), b.astype(float)), 1e-4, "forward")
    want_da, want_db = ref.add_backward(dout.astype(np.float64), b.shape)
    assert_close(da, want_da, 1e-3, "da")
    assert_close(db, want_db, 1e-3, "db")


@pytest.mark.parametrize("a_shape", [(1,), (7, 3), (2, 17, 127)])
def test_bias_broadcast(backend, rng, a_shape):
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(a_shape[-1:]).astype(np.float32)
    dout = rng.standard_normal(a_shape).astype(np.float32)
    out, (da, db) = run_op(backend, add, [a, b], (0, 1), dout)
    assert_close(out, a.astype(float) + b, 1e-4, "forward")
    assert_close(da, dout, 1e-6, "da")
    assert_close(db, ref.add_backward(dout.astype(float), b.shape)[1], 1e-3, "db")


@pytest.mark.parametrize("a_shape,b_shape", [((1,), (1,)), ((7, 3), (3,)), ((2, 17, 5), (17, 5))])
def test_directional_derivative(backend, rng, a_shape, b_shape):
    arrays = [rng.standard_normal(a_shape), rng.standard_normal(b_shape)]
    check_directional(backend, add, arrays, (0, 1), rng)


@pytest.mark.parametrize(
    "a_shape,b_shape", [((3, 4), (3,)), ((3, 4), (2, 3, 4)), ((2, 3, 4), (2, 4))]
)
def test_bad_shapes_raise_with_both_shapes(backend, a_shape, b_shape):
    with pytest.raises(ShapeError) as info:
        add(Tensor.zeros(a_shape, backend), Tensor.zeros(b_shape, backend))
    assert str(a_shape) in str(info.value) and str(b_shape) in str(info.value)
