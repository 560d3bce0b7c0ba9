"""embedding: reference vs finite differences, every backend vs reference (repeated ids included),
out-of-range ids and bad shapes. Tolerances: forward exact (a copy), backward 1e-3 relative."""

import numpy as np
import pytest
import reference as ref
from gradcheck import assert_close, check_directional, numeric_gradient, run_op
from hypothesis import given
from hypothesis import strategies as st

from femto.errors import ShapeError, TokenIdError
from femto.graph import Tensor
from femto.ops import embedding

ODD = st.sampled_from([1, 3, 7, 17, 127]) | st.integers(1, 40)


def test_reference_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    ids = np.array([[0, 2, 2], [1, 2, 0]])  # repeats: every occurrence must add
    w, r = rng.standard_normal((4, 5)), rng.standard_normal((2, 3, 5))
    numeric = numeric_gradient(lambda w_: np.sum(ref.embedding_forward(ids, w_) * r), w)
    assert np.allclose(ref.embedding_backward(r, ids, 4), numeric)


@given(
    lead=st.sampled_from([(), (2,), (3, 1)]),
    N=ODD,
    V=ODD,
    C=ODD,
    few_ids=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(backend, lead, N, V, C, few_ids, seed):
    rng = np.random.default_rng(seed)
    # few_ids draws from at most 2 ids so most rows repeat: the scatter-add must not lose any
    ids = rng.integers(0, min(V, 2) if few_ids else V, size=(*lead, N)).astype(np.int32)
    w = rng.standard_normal((V, C)).astype(np.float32)
    dout = rng.standard_normal((*lead, N, C)).astype(np.float32)
    out, grads = run_op(backend, embedding, [ids, w], (1,), dout)
    np.testing.assert_array_equal(out, ref.embedding_forward(ids, w))
    assert_close(grads[1], ref.embedding_backward(dout.astype(np.float64), ids, V), 1e-3, "dweight")


def test_every_id_the_same(backend, rng):
    ids = np.full((5, 127), 3, np.int32)
    dout = rng.standard_normal((5, 127, 17)).astype(np.float32)
    _, grads = run_op(backend, embedding, [ids, rng.standard_normal((4, 17))], (1,), dout)
    assert_close(grads[1], ref.embedding_backward(dout.astype(np.float64), ids, 4), 1e-3, "dweight")
    assert not grads[1][[0, 1, 2]].any()


@pytest.mark.parametrize("N,V,C", [(1000, 3, 2), (4099, 37, 5), (300, 1, 70)])
def test_backward_over_many_ids_adds_to_the_table_gradient(backend, rng, N, V, C):
    # many ids: the OpenCL gather splits the ids into partial tables summed in a fixed order
    ids = rng.integers(0, V, N).astype(np.int32)
    dout = rng.standard_normal((N, C))
    dweight = backend.from_numpy(np.ones(V * C, np.float32))
    bufs = [backend.from_numpy(a) for a in (dout.astype(np.float32).reshape(-1), ids)]
    for _ in range(2):  # twice: partials must not leak from one call into the next
        backend.run("embedding_backward", dweight, *bufs, N=N, V=V, C=C)
    want = 1 + 2 * ref.embedding_backward(dout, ids, V)
    assert_close(backend.to_numpy(dweight).reshape(V, C).astype(np.float64), want, 1e-3, "dweight")


@pytest.mark.parametrize("N,V,C", [(1, 1, 1), (7, 3, 17), (127, 5, 3)])
def test_directional_derivative(backend, rng, N, V, C):
    ids = rng.integers(0, V, N).astype(np.int32)
    check_directional(backend, embedding, [ids, rng.standard_normal((V, C))], (1,), rng)


@pytest.mark.parametrize("bad", [5, 6, 1000, -1])
def test_out_of_range_id_names_the_id(backend, bad):
    ids = Tensor.from_numpy(np.array([[0, 1], [bad, 2]], np.int32), backend)
    with pytest.raises(TokenIdError, match=f"token id {bad} "):
        embedding(ids, Tensor.zeros((5, 3), backend))


def test_token_id_error_is_an_index_error():
    assert issubclass(TokenIdError, IndexError)


def test_bad_inputs_raise_shape_error(backend):
    ids = Tensor.from_numpy(np.zeros((2, 3), np.int32), backend)
    with pytest.raises(ShapeError) as info:
        embedding(ids, Tensor.zeros((5,), backend))
    assert "(5,)" in str(info.value) and "(2, 3)" in str(info.value) and "(V, C)" in str(info.value)
    with pytest.raises(ShapeError, match="float32"):
        embedding(Tensor.zeros((2, 3), backend), Tensor.zeros((5, 3), backend))


def test_frozen_table_gets_no_gradient(backend):
    # the ids ask for a gradient, the table does not: backward has nothing to compute, and says so
    ids = Tensor.from_numpy(np.array([[1, 3]], np.int32), backend, requires_grad=True)
    table = Tensor.from_numpy(np.ones((5, 2), np.float32), backend)
    embedding(ids, table).backward(Tensor.from_numpy(np.ones((1, 2, 2), np.float32), backend))
    assert table.grad is None and ids.grad is None
