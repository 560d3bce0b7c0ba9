"""Gradient-check helpers shared by the op tests.

numeric_gradient: full central-difference gradient of a float64 function (checks tests/reference.py).
run_op / check_directional: run an op through femto's graph on a backend and compare the directional
derivative of L = sum(y * r) with central differences (docs/design.md, Tests; float32-friendly).
assert_close: the relative-error comparison every op test uses. No op knowledge lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from femto.graph import Tensor, backward


def assert_close(
    actual: np.ndarray, expected: np.ndarray, rtol: float, what: str = "", atol: float = 0.0
) -> None:
    """Elementwise |actual - expected| <= rtol * (|expected| + max|expected|) + atol: relative to the
    element, with the tensor's own scale as the floor, so entries that cancel to ~0 do not demand 1e-4
    of 0. atol is for outputs that are all ~0 in exact arithmetic (each test says why it needs one)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values in the result"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    excess = np.abs(actual - expected) - atol
    err = np.maximum(excess, 0.0) / (np.abs(expected) + scale + 1e-30)
    worst = float(err.max()) if err.size else 0.0
    assert worst <= rtol, (
        f"{what}: relative error {worst:.3g} > {rtol:g} (scale {scale:.3g}, atol {atol:g})"
    )


def numeric_gradient(
    f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """d f / d x by central differences, one coordinate at a time (float64, small inputs only)."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        up = f(x)
        flat[i] = saved - eps
        down = f(x)
        flat[i] = saved
        gflat[i] = (up - down) / (2 * eps)
    return grad


def to_tensors(
    backend, arrays: Sequence[np.ndarray | None], grad_args: Sequence[int]
) -> list[Tensor | None]:
    return [
        None if a is None else Tensor.from_numpy(a, backend, requires_grad=i in grad_args)
        for i, a in enumerate(arrays)
    ]


def run_op(
    backend,
    fn: Callable[..., Tensor],
    arrays: Sequence[np.ndarray | None],
    grad_args: Sequence[int] = (),
    dout: np.ndarray | None = None,
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """y = fn(*tensors) on `backend`; with dout, seed backward with it and return the inputs' grads."""
    tensors = to_tensors(backend, arrays, grad_args)
    y = fn(*tensors)
    out = y.numpy().astype(np.float64)
    grads: list[np.ndarray | None] = []
    if dout is not None:
        backward(y, Tensor.from_numpy(np.asarray(dout, np.float32).reshape(y.shape), backend))
        for i, t in enumerate(tensors):
            grads.append(t.grad.numpy().astype(np.float64) if i in grad_args else None)
    return out, grads


def check_directional(
    backend,
    fn: Callable[..., Tensor],
    arrays: Sequence[np.ndarray | None],
    grad_args: Sequence[int],
    rng: np.random.Generator,
    eps: float = 1e-2,
    rtol: float = 2e-2,
) -> None:
    """Compare L(x + eps v) - L(x - eps v) with <grad L, (x + eps v) - (x - eps v)>, L = sum(y * r).

    The difference of the two float32 inputs is what the derivative is dotted with, so rounding the
    perturbed inputs to float32 costs nothing; the tolerance floor is float32 noise in L itself.
    """
    arrays = [None if a is None else np.asarray(a) for a in arrays]
    y0, _ = run_op(backend, fn, arrays)
    r = rng.standard_normal(y0.shape)
    _, grads = run_op(backend, fn, arrays, grad_args, dout=r)
    plus, minus = list(arrays), list(arrays)
    for i in grad_args:
        v = rng.standard_normal(arrays[i].shape)
        plus[i] = (arrays[i] + eps * v).astype(np.float32)
        minus[i] = (arrays[i] - eps * v).astype(np.float32)
    y_plus, _ = run_op(backend, fn, plus)
    y_minus, _ = run_op(backend, fn, minus)
    numeric = float(np.sum((y_plus - y_minus) * r))
    analytic = sum(
        float(np.sum(grads[i] * (plus[i].astype(np.float64) - minus[i].astype(np.float64))))
        for i in grad_args
    )
    noise = 1e-5 * float(np.sum(np.abs(y_plus * r)) + np.sum(np.abs(y_minus * r)))
    assert abs(numeric - analytic) <= rtol * abs(analytic) + noise, (
        f"directional derivative: finite differences {numeric:.6g}, backward {analytic:.6g}"
    )
