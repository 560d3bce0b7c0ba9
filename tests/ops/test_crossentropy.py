"""crossentropy (fused log-softmax + mean NLL): reference vs finite differences, every backend vs
reference (large logits included), target ids out of range, bad shapes. Tolerances: forward 1e-4,
backward 1e-3 relative."""

import re

import numpy as np
import pytest
import reference as ref
from gradcheck import assert_close, check_directional, numeric_gradient, run_op
from hypothesis import given
from hypothesis import strategies as st

from femto.errors import ShapeError, TokenIdError
from femto.graph import Tensor
from femto.ops import cross_entropy

ODD = st.sampled_from([1, 3, 7, 17, 127]) | st.integers(1, 40)


def test_reference_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    logits, targets = rng.standard_normal((2, 3, 5)), rng.integers(0, 5, (2, 3))
    numeric = numeric_gradient(lambda z: 0.7 * ref.crossentropy_forward(z, targets), logits)
    assert np.allclose(ref.crossentropy_backward(0.7, logits, targets), numeric)


def test_reference_uniform_logits_give_log_v():
    assert ref.crossentropy_forward(np.zeros((4, 7)), np.arange(4)) == pytest.approx(np.log(7))


@given(
    lead=st.sampled_from([(), (2,)]),
    N=ODD,
    V=ODD,
    scale=st.sampled_from([1.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(backend, lead, N, V, scale, seed):
    # scale 30 makes exp() overflow float32 without the max subtraction
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((*lead, N, V)) * scale).astype(np.float32)
    targets = rng.integers(0, V, (*lead, N)).astype(np.int32)
    dloss = np.float32(rng.standard_normal())
    out, (dlogits, dtargets) = run_op(backend, cross_entropy, [logits, targets], (0,), dloss)
    assert out.shape == () and dtargets is None
    assert_close(out, ref.crossentropy_forward(logits.astype(float), targets), 1e-4, "loss")
    want = ref.crossentropy_backward(float(dloss), logits.astype(float), targets)
    assert_close(dlogits, want, 1e-3, "dlogits")


@pytest.mark.parametrize("N,V", [(1, 1), (7, 3), (3, 127), (17, 17)])
def test_directional_derivative(backend, rng, N, V):
    arrays = [rng.standard_normal((N, V)), rng.integers(0, V, N).astype(np.int32)]
    check_directional(backend, cross_entropy, arrays, (0,), rng)


@pytest.mark.parametrize("bad", [5, 99, -1])
def test_out_of_range_target_names_the_id(backend, bad):
    targets = Tensor.from_numpy(np.array([0, bad, 1], np.int32), backend)
    with pytest.raises(TokenIdError, match=f"target id {bad} "):
        cross_entropy(Tensor.zeros((3, 5), backend), targets)


@pytest.mark.parametrize(
    "t_shape,t_dtype", [((4,), np.int32), ((3, 1), np.int32), ((3,), np.float32)]
)
def test_bad_targets_raise_with_both_shapes(backend, t_shape, t_dtype):
    targets = Tensor.from_numpy(np.zeros(t_shape, t_dtype), backend)
    with pytest.raises(ShapeError) as info:
        cross_entropy(Tensor.zeros((3, 5), backend), targets)
    assert "(3, 5)" in str(info.value) and str(t_shape) in str(info.value)


@pytest.mark.parametrize("shape", [(0, 5), (2, 0)])
def test_no_rows_or_no_classes_is_a_shape_error(backend, shape):
    targets = Tensor.from_numpy(np.zeros(shape[:1], np.int32), backend)
    with pytest.raises(ShapeError, match=f"logits {re.escape(str(shape))} need at least one row"):
        cross_entropy(Tensor.zeros(shape, backend), targets)
