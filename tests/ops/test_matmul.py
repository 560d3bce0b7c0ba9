"""matmul (linear layer): reference vs finite differences, every backend vs reference, bad shapes.

Tolerances: forward 1e-4, backward 1e-3 relative (tests/gradcheck.py assert_close).
"""

import numpy as np
import pytest
import reference as ref
from gradcheck import assert_close, check_directional, numeric_gradient, run_op
from hypothesis import given
from hypothesis import strategies as st

from femto.errors import ShapeError
from femto.graph import Tensor
from femto.ops import matmul

ODD = st.sampled_from([1, 3, 7, 17, 127]) | st.integers(1, 40)


def test_reference_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    r = rng.standard_normal((2, 3, 4))
    dx, dw, db = ref.matmul_backward(r, x, w, b)
    assert np.allclose(dx, numeric_gradient(lambda x_: np.sum(ref.matmul_forward(x_, w, b) * r), x))
    assert np.allclose(dw, numeric_gradient(lambda w_: np.sum(ref.matmul_forward(x, w_, b) * r), w))
    assert np.allclose(db, numeric_gradient(lambda b_: np.sum(ref.matmul_forward(x, w, b_) * r), b))
    assert ref.matmul_backward(r, x, w, None)[2] is None


@given(
    lead=st.sampled_from([(), (2,), (2, 3)]),
    N=ODD,
    C=ODD,
    OC=ODD,
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(backend, lead, N, C, OC, bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, N, C)).astype(np.float32)
    w = (rng.standard_normal((OC, C)) / np.sqrt(C)).astype(np.float32)
    b = rng.standard_normal(OC).astype(np.float32) if bias else None
    dout = rng.standard_normal((*lead, N, OC)).astype(np.float32)
    x64, w64, b64 = (
        x.astype(np.float64),
        w.astype(np.float64),
        None if b is None else b.astype(float),
    )
    grad_args = (0, 1, 2) if bias else (0, 1)
    out, grads = run_op(backend, matmul, [x, w, b], grad_args, dout)
    assert_close(out, ref.matmul_forward(x64, w64, b64), 1e-4, "forward")
    expected = ref.matmul_backward(dout.astype(np.float64), x64, w64, b64)
    for name, got, want in zip(("dinp", "dweight", "dbias"), grads, expected):
        assert (got is None) == (want is None), name
        if want is not None:
            assert_close(got, want, 1e-3, name)


@pytest.mark.parametrize("N,C,OC", [(1, 1, 1), (7, 3, 17), (3, 127, 5), (17, 8, 127)])
@pytest.mark.parametrize("bias", [True, False])
def test_directional_derivative(backend, rng, N, C, OC, bias):
    arrays = [
        rng.standard_normal((N, C)),
        rng.standard_normal((OC, C)),
        rng.standard_normal(OC) if bias else None,
    ]
    check_directional(backend, matmul, arrays, (0, 1, 2) if bias else (0, 1), rng)


def test_only_requested_gradients_are_made(backend, rng):
    x = Tensor.from_numpy(rng.standard_normal((3, 4)), backend)
    w = Tensor.from_numpy(rng.standard_normal((5, 4)), backend, requires_grad=True)
    matmul(x, w).backward(Tensor.from_numpy(np.ones((3, 5), np.float32), backend))
    assert x.grad is None
    assert_close(w.grad.numpy(), np.ones((5, 3)) @ x.numpy(), 1e-5, "dweight")


@pytest.mark.parametrize(
    "x_shape,w_shape,b_shape,named",
    [
        ((3, 4), (5, 3), None, ((3, 4), (5, 3))),
        ((3, 4), (4,), None, ((3, 4), (4,))),
        ((3, 4), (5, 4), (4,), ((5, 4), (4,))),
        ((3, 4), (5, 4), (5, 1), ((5, 4), (5, 1))),
    ],
)
def test_bad_shapes_raise_with_both_shapes(backend, x_shape, w_shape, b_shape, named):
    x = Tensor.zeros(x_shape, backend)
    w = Tensor.zeros(w_shape, backend)
    b = Tensor.zeros(b_shape, backend) if b_shape else None
    with pytest.raises(ShapeError) as info:
        matmul(x, w, b)
    assert "matmul" in str(info.value)
    for shape in named:
        assert str(shape) in str(info.value)


def test_int_input_is_rejected(backend):
    ids = Tensor.from_numpy(np.zeros((3, 4), np.int32), backend)
    with pytest.raises(ShapeError, match="int32"):
        matmul(ids, Tensor.zeros((5, 4), backend))


def test_no_input_channels_is_a_shape_error(backend):
    with pytest.raises(ShapeError, match=r"matmul: inp \(3, 0\) .*C must be >= 1"):
        matmul(Tensor.zeros((3, 0), backend), Tensor.zeros((5, 0), backend))


@pytest.mark.parametrize(
    "N, C, OC", [(1, 1, 1), (7, 3, 17), (70, 45, 33), (1000, 5, 3), (4099, 17, 9), (300, 70, 130)]
)
def test_backward_kernel_overwrites_or_accumulates_dinp(backend, rng, N, C, OC):
    # accumulate_dinp=0 must never read dinp (the graph hands it uninitialised); dweight and dbias
    # always accumulate, also where many rows split their sums into partials (OpenCL)
    x, w = rng.standard_normal((N, C)), rng.standard_normal((OC, C))
    dout = rng.standard_normal((N, OC))
    dx, dw, db = ref.matmul_backward(dout, x, w, np.zeros(OC))
    for acc, start in ((0, np.nan), (1, 1.0)):
        grads = [backend.from_numpy(np.full(s, start, np.float32).reshape(-1))
                 for s in ((N, C),)] + [backend.from_numpy(np.ones(n, np.float32))
                                        for n in (OC * C, OC)]  # fmt: skip
        inputs = [backend.from_numpy(a.astype(np.float32).reshape(-1)) for a in (dout, x, w)]
        backend.run("matmul_backward", *grads, *inputs, N=N, C=C, OC=OC, accumulate_dinp=acc)
        got = [backend.to_numpy(g).astype(np.float64) for g in grads]
        assert_close(got[0], dx.reshape(-1) + acc, 1e-3, f"dinp (accumulate_dinp={acc})")
        assert_close(got[1], dw.reshape(-1) + 1, 1e-3, "dweight")
        assert_close(got[2], db + 1, 1e-3, "dbias")


@pytest.mark.parametrize(
    "N", [1, 2, 4, 5]
)  # up to 4 rows the forward takes dot products, not the GEMM
@pytest.mark.parametrize("C,OC", [(1, 1), (15, 7), (16, 8), (17, 9), (130, 65), (256, 1000)])
def test_few_row_forward_matches_reference(backend, N, C, OC):
    rng = np.random.default_rng(N * 1000 + C)
    x = rng.standard_normal((N, C)).astype(np.float32)
    w = (rng.standard_normal((OC, C)) / np.sqrt(C)).astype(np.float32)
    for b in (rng.standard_normal(OC).astype(np.float32), None):
        out = matmul(
            *(Tensor.from_numpy(a, backend) for a in (x, w)),
            None if b is None else Tensor.from_numpy(b, backend),
        ).numpy()
        want = ref.matmul_forward(
            x.astype(float), w.astype(float), None if b is None else b.astype(float)
        )
        assert_close(out, want, 1e-4, f"forward N={N} bias={b is not None}")
