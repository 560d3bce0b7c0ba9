"""AdamW: agreement with a float64 PyTorch-style AdamW (decay on matrices only, global-norm clipping),
gradient division for accumulation, and a state round-trip that continues identically."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from femto.errors import CheckpointError, ConfigError
from femto.graph import Tensor
from femto.optim import AdamW

SHAPES = {"w": (5, 3), "b": (3,), "ln": (7,)}


def make_params(backend, rng):
    params = {
        n: Tensor.from_numpy(rng.standard_normal(s).astype(np.float32), backend, requires_grad=True)
        for n, s in SHAPES.items()
    }
    return params


def set_grads(params, grads):
    for n, p in params.items():
        p.ensure_grad().copy_from_numpy(grads[n])


def reference_steps(params0, grad_list, lr, clip, divisor=1.0, wd=0.1, betas=(0.9, 0.95)):
    """float64 AdamW as torch.optim.AdamW + clip_grad_norm_ would do it."""
    p = {n: a.astype(np.float64) for n, a in params0.items()}
    m = {n: np.zeros_like(a) for n, a in p.items()}
    v = {n: np.zeros_like(a) for n, a in p.items()}
    for step, grads in enumerate(grad_list, 1):
        g = {n: grads[n] / divisor for n in p}
        norm = np.sqrt(sum(ref.sum_squares(x) for x in g.values()))
        scale = min(1.0, clip / (norm + 1e-6))
        for n, value in p.items():
            decay = wd if value.ndim >= 2 else 0.0
            p[n], m[n], v[n] = ref.adamw_update(
                value, m[n], v[n], g[n], lr, betas[0], betas[1], 1e-8, decay, scale, step
            )
    return p


@pytest.mark.parametrize("grad_size", [0.01, 10.0])  # below and above the clipping norm
def test_matches_reference_adamw_with_clipping(backend, grad_size):
    rng = np.random.default_rng(0)
    params = make_params(backend, rng)
    start = {n: p.numpy() for n, p in params.items()}
    opt = AdamW(params, lr=1e-2, weight_decay=0.1, grad_clip=1.0)
    grad_list = [
        {n: (rng.standard_normal(s) * grad_size).astype(np.float32) for n, s in SHAPES.items()}
        for _ in range(4)
    ]
    norms = []
    for grads in grad_list:
        set_grads(params, grads)
        opt.step()
        norms.append(opt.grad_norm())
    expected = reference_steps(start, grad_list, 1e-2, 1.0)
    for n, p in params.items():
        np.testing.assert_allclose(p.numpy(), expected[n], rtol=1e-5, atol=1e-6, err_msg=n)
    true_norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grad_list[-1].values()))
    assert norms[-1] == pytest.approx(true_norm, rel=1e-5)


def test_weight_decay_only_on_matrices(cpu_backend):
    rng = np.random.default_rng(1)
    params = make_params(cpu_backend, rng)
    before = {n: p.numpy() for n, p in params.items()}
    opt = AdamW(params, lr=0.1, weight_decay=0.5)
    set_grads(params, {n: np.zeros(s, np.float32) for n, s in SHAPES.items()})
    opt.step()  # zero gradients: only decay can move a parameter
    np.testing.assert_allclose(params["w"].numpy(), before["w"] * (1 - 0.1 * 0.5), rtol=1e-6)
    np.testing.assert_array_equal(params["b"].numpy(), before["b"])
    np.testing.assert_array_equal(params["ln"].numpy(), before["ln"])


def test_grad_divisor_averages_accumulated_gradients(cpu_backend):
    rng = np.random.default_rng(2)
    g1 = {n: rng.standard_normal(s).astype(np.float32) * 0.01 for n, s in SHAPES.items()}
    g2 = {n: rng.standard_normal(s).astype(np.float32) * 0.01 for n, s in SHAPES.items()}
    start_rng = np.random.default_rng(3)
    a = make_params(cpu_backend, start_rng)
    b = {n: Tensor.from_numpy(p.numpy(), cpu_backend, requires_grad=True) for n, p in a.items()}
    opt_a, opt_b = AdamW(a), AdamW(b)
    set_grads(a, {n: g1[n] + g2[n] for n in SHAPES})  # two micro-batches accumulated
    opt_a.step(grad_divisor=2)
    set_grads(b, {n: (g1[n] + g2[n]) / 2 for n in SHAPES})
    opt_b.step()
    for n in SHAPES:
        np.testing.assert_allclose(a[n].numpy(), b[n].numpy(), rtol=1e-6, atol=1e-7)


def test_state_round_trip_continues_identically(cpu_backend):
    rng = np.random.default_rng(4)
    grads = [
        {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()} for _ in range(4)
    ]
    straight = make_params(cpu_backend, np.random.default_rng(5))
    opt = AdamW(straight)
    for g in grads:
        set_grads(straight, g)
        opt.step(lr=3e-3)

    first = make_params(cpu_backend, np.random.default_rng(5))
    opt1 = AdamW(first)
    for g in grads[:2]:
        set_grads(first, g)
        opt1.step(lr=3e-3)
    saved = opt1.state_arrays()
    assert set(saved) == {f"{n}.{k}" for n in SHAPES for k in ("exp_avg", "exp_avg_sq")}
    resumed = {
        n: Tensor.from_numpy(p.numpy(), cpu_backend, requires_grad=True) for n, p in first.items()
    }
    opt2 = AdamW(resumed)
    opt2.load_state_arrays(saved, opt1.step_count, "test")
    for g in grads[2:]:
        set_grads(resumed, g)
        opt2.step(lr=3e-3)
    for n in SHAPES:
        np.testing.assert_array_equal(resumed[n].numpy(), straight[n].numpy())


def test_state_load_rejects_mismatches(cpu_backend):
    params = make_params(cpu_backend, np.random.default_rng(6))
    opt = AdamW(params)
    state = opt.state_arrays()
    with pytest.raises(
        CheckpointError, match=r"optimizer.safetensors: tensor w.exp_avg has shape \[2\]"
    ):
        opt.load_state_arrays(
            dict(state, **{"w.exp_avg": np.zeros(2, np.float32)}), 1, "optimizer.safetensors"
        )
    with pytest.raises(CheckpointError, match="missing"):
        opt.load_state_arrays({}, 1, "optimizer.safetensors")


def test_bad_hyperparameters():
    with pytest.raises(ConfigError, match="betas"):
        AdamW({}, betas=(1.0, 0.9))


def test_parameters_are_packed_and_a_step_is_two_calls_per_group(backend):
    params = make_params(backend, np.random.default_rng(7))
    values = {n: p.numpy() for n, p in params.items()}
    opt = AdamW(params)
    for n, p in params.items():  # packing moved the values, not changed them
        np.testing.assert_array_equal(p.numpy(), values[n])
    set_grads(params, {n: np.ones(s, np.float32) for n, s in SHAPES.items()})
    calls = []
    run = backend.run

    def counting_run(name, *bufs, **scalars):
        calls.append(name)
        run(name, *bufs, **scalars)

    backend.run = counting_run
    try:
        opt.step()
    finally:
        del backend.run
    # one group of matrices (w) and one of vectors (b, ln): a sum and an update each
    assert sorted(calls) == ["adamw_update"] * 2 + ["sum_squares"] * 2
    assert opt.grad_norm() == pytest.approx(np.sqrt(sum(np.prod(s) for s in SHAPES.values())))


def test_a_dropped_gradient_counts_as_zero(cpu_backend):
    params = make_params(cpu_backend, np.random.default_rng(8))
    before = params["b"].numpy()
    opt = AdamW(params, lr=0.1)
    set_grads(params, {n: np.ones(s, np.float32) for n, s in SHAPES.items()})
    params["b"].free_grad()
    opt.step()
    np.testing.assert_array_equal(params["b"].numpy(), before)  # no gradient, no decay: unmoved
    assert params["b"].grad is not None  # the packed gradient is back, ready for the next step
    assert opt.grad_norm() == pytest.approx(np.sqrt(15 + 7))


def test_parameters_packed_by_a_second_optimizer_fail_the_first(cpu_backend):
    params = make_params(cpu_backend, np.random.default_rng(9))
    first = AdamW(params)
    AdamW(params)
    with pytest.raises(
        ConfigError, match="parameter w no longer lives in this optimizer's storage"
    ):
        first.step()
