"""Causal self-attention: reference vs finite differences, every backend vs reference, the cached
(generation) forward against the full forward, bad shapes. Tolerances: forward 1e-4, backward 1e-3
relative; cached vs full 1e-4 (online vs two-pass softmax round differently)."""

import numpy as np
import pytest
import reference as ref
from gradcheck import assert_close, check_directional, numeric_gradient, run_op
from hypothesis import given
from hypothesis import strategies as st

from femto.errors import ShapeError
from femto.graph import Tensor, no_grad
from femto.ops import attention, attention_cached


def test_reference_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    qkv, r = rng.standard_normal((2, 4, 12)), rng.standard_normal((2, 4, 4))
    numeric = numeric_gradient(lambda z: np.sum(ref.attention_forward(z, 2)[0] * r), qkv)
    assert np.allclose(ref.attention_backward(r, qkv, 2), numeric)


def test_reference_is_causal():
    rng = np.random.default_rng(1)
    qkv = rng.standard_normal((1, 5, 6))
    later = qkv.copy()
    later[:, 3:] += 1.0  # changing positions 3, 4 must not move outputs 0..2
    out, att = ref.attention_forward(qkv, 1)
    assert np.allclose(ref.attention_forward(later, 1)[0][:, :3], out[:, :3])
    assert np.allclose(att.sum(-1), 1.0) and not np.triu(att[0, 0], 1).any()


@given(
    B=st.sampled_from([1, 2, 3]),
    T=st.sampled_from([1, 3, 7, 17]) | st.integers(1, 24),
    NH=st.sampled_from([1, 2, 3]),
    HS=st.sampled_from([1, 3, 8, 17]),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(backend, B, T, NH, HS, seed):
    rng = np.random.default_rng(seed)
    C = NH * HS
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    out, (dqkv,) = run_op(backend, lambda t: attention(t, NH), [qkv], (0,), dout)
    want_out, _ = ref.attention_forward(qkv.astype(float), NH)
    assert_close(out, want_out, 1e-4, "forward")
    assert_close(
        dqkv, ref.attention_backward(dout.astype(float), qkv.astype(float), NH), 1e-3, "dqkv"
    )


def test_long_sequence(backend, rng):
    qkv = rng.standard_normal((1, 127, 3 * 12)).astype(np.float32)
    dout = rng.standard_normal((1, 127, 12)).astype(np.float32)
    out, (dqkv,) = run_op(backend, lambda t: attention(t, 4), [qkv], (0,), dout)
    assert_close(out, ref.attention_forward(qkv.astype(float), 4)[0], 1e-4, "forward")
    assert_close(
        dqkv, ref.attention_backward(dout.astype(float), qkv.astype(float), 4), 1e-3, "dqkv"
    )


def test_saved_probabilities_match_reference(backend, rng):
    from femto.ops import Attention

    qkv = rng.standard_normal((2, 7, 9)).astype(np.float32)
    op = Attention(backend, 3)
    op(Tensor.from_numpy(qkv, backend))
    assert_close(op.att.numpy(), ref.attention_forward(qkv.astype(float), 3)[1], 1e-4, "att")


@pytest.mark.parametrize("B,T,NH,HS", [(1, 1, 1, 1), (2, 7, 3, 3), (1, 17, 2, 8)])
def test_directional_derivative(backend, rng, B, T, NH, HS):
    qkv = rng.standard_normal((B, T, 3 * NH * HS))
    check_directional(backend, lambda t: attention(t, NH), [qkv], (0,), rng)


@pytest.mark.parametrize(
    "B,NH,HS,chunks", [(1, 1, 1, [1, 1, 1]), (2, 3, 5, [4, 1, 1, 3]), (1, 2, 8, [17])]
)
def test_cached_forward_matches_full_forward(backend, rng, B, NH, HS, chunks):
    """Feed the sequence in chunks (a prompt, then one token at a time) through the kv cache."""
    C, T = NH * HS, sum(chunks)
    TMAX = T + 2  # unused cache slots (NaN here) must never be read
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    kcache = Tensor.from_numpy(np.full((B, NH, TMAX, HS), np.nan, np.float32), backend)
    vcache = Tensor.from_numpy(np.full((B, NH, TMAX, HS), np.nan, np.float32), backend)
    with_cache, pos = [], 0
    with no_grad():
        for n in chunks:
            chunk = Tensor.from_numpy(np.ascontiguousarray(qkv[:, pos : pos + n]), backend)
            with_cache.append(attention_cached(chunk, kcache, vcache, NH, pos).numpy())
            pos += n
    full = attention(Tensor.from_numpy(qkv, backend), NH).numpy()
    assert_close(np.concatenate(with_cache, axis=1), full, 1e-4, "cached forward")
    # the caches hold k and v as (B, NH, TMAX, HS)
    k = qkv[..., C : 2 * C].reshape(B, T, NH, HS).transpose(0, 2, 1, 3)
    v = qkv[..., 2 * C :].reshape(B, T, NH, HS).transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(kcache.numpy()[:, :, :T], k)
    np.testing.assert_array_equal(vcache.numpy()[:, :, :T], v)


def test_cached_forward_refuses_autograd_and_overflow(backend):
    qkv = Tensor.zeros((1, 3, 12), backend)
    cache = Tensor.zeros((1, 2, 4, 2), backend)
    with pytest.raises(ShapeError, match=r"pos 2 .*TMAX=4"):
        attention_cached(qkv, cache, Tensor.zeros((1, 2, 4, 2), backend), 2, pos=2)
    with pytest.raises(ShapeError, match=r"\(1, 2, 4, 3\)"):
        attention_cached(qkv, cache, Tensor.zeros((1, 2, 4, 3), backend), 2, pos=0)
    qkv.requires_grad = True
    with pytest.raises(RuntimeError, match="no_grad"):
        attention_cached(qkv, cache, Tensor.zeros((1, 2, 4, 2), backend), 2, pos=0)


@pytest.mark.parametrize("shape", [(2, 3, 10), (2, 3, 9), (6, 9)])
def test_bad_shapes_name_the_shape(backend, shape):
    with pytest.raises(ShapeError) as info:
        attention(Tensor.zeros(shape, backend), n_head=2)
    assert str(shape) in str(info.value) and "n_head=2" in str(info.value)


@pytest.mark.parametrize("n_head", [0, -1])
def test_n_head_below_one_is_a_shape_error(backend, n_head):
    with pytest.raises(ShapeError, match=f"n_head must be >= 1, got n_head={n_head}"):
        attention(Tensor.zeros((1, 2, 6), backend), n_head=n_head)


def test_no_channels_is_a_shape_error(backend):
    with pytest.raises(ShapeError, match=r"\(1, 2, 0\)"):
        attention(Tensor.zeros((1, 2, 0), backend), n_head=1)


@pytest.mark.parametrize("B,T,NH,HS", [(1, 1, 1, 1), (2, 30, 3, 5), (1, 50, 2, 8), (1, 300, 2, 4)])
def test_backward_kernel_overwrites_or_accumulates(backend, rng, B, T, NH, HS):
    # accumulate=0 must never read dqkv (the graph hands it uninitialised): NaNs there stay out.
    # T=30 and 50 cross query blocks; T=300 crosses key chunks too.
    C = NH * HS
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    out, att = ref.attention_forward(qkv.astype(float), NH)
    expected = ref.attention_backward(dout.astype(float), qkv.astype(float), NH).reshape(-1)
    sizes = {"B": B, "T": T, "C": C, "NH": NH}
    for accumulate, start in ((0, np.nan), (1, 1.0)):
        dqkv = backend.from_numpy(np.full(B * T * 3 * C, start, np.float32))
        saved = [np.ascontiguousarray(a, np.float32).reshape(-1) for a in (dout, qkv, att, out)]
        backend.run(
            "attention_backward",
            dqkv,
            *(backend.from_numpy(a) for a in saved),
            **sizes,
            accumulate=accumulate,
        )
        got = backend.to_numpy(dqkv).astype(np.float64)
        assert_close(got, expected + accumulate, 1e-3, f"dqkv (accumulate={accumulate})")


@pytest.mark.parametrize("pos,T", [(0, 1), (0, 9), (3, 5), (0, 130)])  # 130: past the fresh path
def test_cached_last_only_is_the_last_row_and_stores_every_key(backend, rng, pos, T):
    B, NH, HS = 2, 2, 16
    C, TMAX = NH * HS, pos + T + 1
    qkv = rng.standard_normal((B, pos + T, 3 * C)).astype(np.float32)
    caches = {}
    with no_grad():
        for last_only in (False, True):
            kv = [Tensor.zeros((B, NH, TMAX, HS), backend) for _ in range(2)]
            if pos:
                attention_cached(Tensor.from_numpy(qkv[:, :pos].copy(), backend), *kv, NH, 0)
            new = Tensor.from_numpy(qkv[:, pos:].copy(), backend)
            out = attention_cached(new, *kv, NH, pos, last_only=last_only).numpy()
            caches[last_only] = (out, [t.numpy() for t in kv])
    full, last = caches[False][0], caches[True][0]
    assert last.shape == (B, 1, C)
    assert_close(last, full[:, -1:], 1e-5, "last row")
    for got, want in zip(caches[True][1], caches[False][1]):
        np.testing.assert_array_equal(got, want)


def test_cached_with_no_new_tokens(backend):
    qkv = Tensor.zeros((1, 0, 12), backend)
    kv = Tensor.zeros((1, 2, 4, 2), backend)
    with no_grad():
        assert attention_cached(qkv, kv, kv, 2, 0).shape == (1, 0, 4)
        with pytest.raises(ShapeError, match="last_only needs a new token"):
            attention_cached(qkv, kv, kv, 2, 0, last_only=True)
