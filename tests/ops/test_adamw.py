"""Optimizer kernels adamw_update and sum_squares, called directly on every backend (they have no
Op: femto/optim.py drives them). Tolerance: 1e-5 relative after several steps; sum_squares 1e-5.
adamw_update takes the squared gradient norm from a device buffer (or NULL) and clips on the device."""

import numpy as np
import pytest
import reference as ref
from gradcheck import assert_close

HYPER = {
    "lr": 1e-2,
    "beta1": 0.9,
    "beta2": 0.95,
    "eps": 1e-8,
    "weight_decay": 0.1,
}
REF_HYPER = {k: HYPER[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay")}


def test_reference_first_step_is_sign_sized():
    # step 1: mhat = g, vhat = g^2, so the update is lr * sign(g) (plus the decay), whatever |g| is
    param, grad = np.array([1.0, -2.0, 3.0]), np.array([1e-3, -5.0, 40.0])
    new, _, _ = ref.adamw_update(
        param, 0 * param, 0 * param, grad, 0.1, 0.9, 0.99, 0.0, 0.0, 1.0, 1
    )
    assert np.allclose(new, param - 0.1 * np.sign(grad))
    decayed, _, _ = ref.adamw_update(
        param, 0 * param, 0 * param, 0 * grad, 0.1, 0.9, 0.99, 1e-8, 0.5, 1.0, 1
    )
    assert np.allclose(decayed, param * (1 - 0.1 * 0.5))


@pytest.mark.parametrize("N", [1, 3, 7, 17, 127, 10_000])
@pytest.mark.parametrize(
    "grad_sumsq, grad_clip, grad_divisor",
    [(None, 0.0, 2.0), (0.25, 1.0, 1.0), (400.0, 1.0, 1.0), (400.0, 1.0, 4.0), (400.0, 0.0, 1.0)],
    ids=["no-clip-divided", "under-norm", "clipped", "clipped-divided", "clip-off"],
)
def test_adamw_update_matches_reference(backend, rng, N, grad_sumsq, grad_clip, grad_divisor):
    param = rng.standard_normal(N).astype(np.float32)
    m, v = np.zeros(N), np.zeros(N)
    p_buf = backend.from_numpy(param)
    m_buf, v_buf = backend.zeros(N), backend.zeros(N)
    sumsq_buf = None
    if grad_sumsq is not None:
        sumsq_buf = backend.from_numpy(np.array([grad_sumsq], np.float32))
    scale = ref.clip_grad_scale(grad_sumsq, grad_clip, grad_divisor)
    want = param.astype(np.float64)
    for step in range(1, 5):
        grad = rng.standard_normal(N).astype(np.float32)
        backend.run(
            "adamw_update", p_buf, m_buf, v_buf, backend.from_numpy(grad), sumsq_buf, N=N,
            **HYPER, grad_clip=grad_clip, grad_divisor=grad_divisor, step=step,
        )  # fmt: skip
        want, m, v = ref.adamw_update(
            want, m, v, grad.astype(np.float64), **REF_HYPER, grad_scale=scale, step=step
        )
    assert_close(backend.to_numpy(p_buf), want, 1e-5, "param")
    assert_close(backend.to_numpy(m_buf), m, 1e-5, "m")
    assert_close(backend.to_numpy(v_buf), v, 1e-5, "v")


def test_reference_clip_scale_is_clip_grad_norm():
    # norm 20 over a clip of 1: scaled to norm 1 (up to the 1e-6 guard); under the clip: unchanged
    assert ref.clip_grad_scale(400.0, 1.0, 1.0) == pytest.approx(1 / 20, rel=1e-6)
    assert ref.clip_grad_scale(0.25, 1.0, 1.0) == 1.0
    assert ref.clip_grad_scale(400.0, 1.0, 4.0) == pytest.approx(0.25 * 1 / 5, rel=1e-6)
    assert ref.clip_grad_scale(None, 1.0, 2.0) == 0.5


@pytest.mark.parametrize("N", [1, 3, 7, 17, 63, 64, 65, 127, 100_003])
def test_sum_squares_matches_reference(backend, rng, N):
    x = rng.standard_normal(N).astype(np.float32)
    out = backend.from_numpy(np.array([1.5], np.float32))  # it accumulates into what is there
    backend.run("sum_squares", out, backend.from_numpy(x), N=N)
    assert_close(
        backend.to_numpy(out), [1.5 + ref.sum_squares(x.astype(np.float64))], 1e-5, "sum_squares"
    )
