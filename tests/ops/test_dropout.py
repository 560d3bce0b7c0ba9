"""dropout (inverted, counter-hash mask): the mask equals the reference hash bit for bit on every
backend, backward reuses it, drop rate statistics, p = 0 identity, seed reproducibility, bad p."""

import numpy as np
import pytest
import reference as ref
from gradcheck import assert_close, check_directional, numeric_gradient, run_op
from hypothesis import given
from hypothesis import strategies as st

from femto.errors import ConfigError, ShapeError
from femto.graph import Tensor
from femto.ops import Dropout, dropout
from femto.ops.dropout import seed_tensor

ODD = st.sampled_from([1, 3, 7, 17, 127]) | st.integers(1, 40)


def test_reference_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    x, r = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    numeric = numeric_gradient(lambda x_: np.sum(ref.dropout_forward(x_, 0.3, 11) * r), x)
    assert np.allclose(ref.dropout_backward(r, 0.3, 11), numeric)


@given(
    shape=st.tuples(ODD) | st.tuples(ODD, ODD),
    p=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_reference(backend, shape, p, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) + 0.1).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    out, (dx,) = run_op(
        backend, lambda t: Dropout(t.backend, p)(t, seed_tensor(seed, t.backend)), [x], (0,), dout
    )
    assert_close(out, ref.dropout_forward(x.astype(float), p, seed), 1e-6, "forward")
    assert_close(dx, ref.dropout_backward(dout.astype(float), p, seed), 1e-6, "dinp")


@pytest.mark.parametrize("shape", [(1,), (7, 3), (127, 17)])
def test_directional_derivative(backend, rng, shape):
    check_directional(
        backend, lambda t: dropout(t, 0.25, 5), [rng.standard_normal(shape)], (0,), rng
    )


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_drop_rate_and_scale(backend, p):
    N = 200_000
    out = dropout(Tensor.from_numpy(np.ones(N, np.float32), backend), p, 3).numpy()
    dropped = float(np.mean(out == 0.0))
    # binomial standard deviation is sqrt(p (1-p) / N) <= 0.0012: 6 sigma
    assert abs(dropped - p) < 6 * np.sqrt(p * (1 - p) / N)
    assert np.allclose(out[out != 0.0], 1.0 / (1.0 - p), rtol=1e-6)
    assert abs(float(out.mean()) - 1.0) < 0.02  # inverted dropout keeps the expectation


def test_p_zero_is_identity(backend, rng):
    x = Tensor.from_numpy(rng.standard_normal((3, 17)), backend, requires_grad=True)
    assert dropout(x, 0.0, 1) is x  # the functional form records nothing at p = 0
    np.testing.assert_array_equal(
        Dropout(backend, 0.0)(x, seed_tensor(1, backend)).numpy(), x.numpy()
    )


def test_seed_reproducibility(backend):
    x = Tensor.from_numpy(np.ones(4096, np.float32), backend)
    first, again = dropout(x, 0.5, 7).numpy(), dropout(x, 0.5, 7).numpy()
    other = dropout(x, 0.5, 8).numpy()
    np.testing.assert_array_equal(first, again)
    assert (
        np.mean((first == 0) != (other == 0)) > 0.4
    )  # independent masks differ in ~half the places


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_p_is_rejected(backend, p):
    with pytest.raises(ConfigError, match=str(p)):
        Dropout(backend, p)


def test_each_site_reads_its_own_seed(backend, rng):
    # the model's form: one seeds tensor, one entry per dropout site
    x = rng.standard_normal((5, 33)).astype(np.float32)
    seeds = Tensor.from_numpy(np.array([11, 4000, 7], np.int32), backend)
    xt = Tensor.from_numpy(x, backend)
    for site, seed in enumerate((11, 4000, 7)):
        got = dropout(xt, 0.4, seeds, site).numpy()
        assert_close(got, ref.dropout_forward(x.astype(float), 0.4, seed), 1e-6, f"site {site}")
    with pytest.raises(ShapeError, match="site 3 needs int32 seeds"):
        dropout(xt, 0.4, seeds, 3)
