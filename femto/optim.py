"""AdamW with global-norm gradient clipping: one `adamw_update` kernel call per parameter.

Kernel contracts (csrc/adamw.c, kernels/adamw.cl), all buffers flat with N elements:
  sum_squares(out (1,), inp (N,), N): out[0] += sum of inp^2, in a fixed order (thread-count independent).
  adamw_update(param, m, v, grad, grad_sumsq (1,) or NULL, N, lr, beta1, beta2, eps, weight_decay,
               grad_clip, grad_divisor, step)
      g = grad / grad_divisor, scaled by clip_grad_norm_'s min(1, grad_clip / (norm + 1e-6)) where
      norm = sqrt(grad_sumsq) / grad_divisor; then PyTorch's AdamW (decoupled decay, bias correction
      with `step`, 1-based).
The clip factor is computed on the device, so a step never waits for the gradient norm; `grad_norm()`
reads it back only when asked (for logging). The optimizer does not compute gradients or reduce them
across processes; it reads `.grad` as given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from femto.errors import CheckpointError, ConfigError
from femto.graph import Tensor


class AdamW:
    """AdamW over named parameters. Weight decay applies to matrices (2-D: embeddings and linear
    weights) only, never to biases or LayerNorm weights, as in nanoGPT's configure_optimizers."""

    def __init__(
        self,
        params: Mapping[str, Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        grad_clip: float = 1.0,
    ):
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ConfigError(f"AdamW betas must be in [0, 1), got {betas}")
        if eps <= 0 or weight_decay < 0 or grad_clip < 0:
            raise ConfigError(
                f"AdamW needs eps > 0, weight_decay >= 0, grad_clip >= 0; got eps={eps}, "
                f"weight_decay={weight_decay}, grad_clip={grad_clip}"
            )
        self.params = dict(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.weight_decay, self.grad_clip = weight_decay, grad_clip
        self.step_count = (
            0  # number of updates applied; the kernel's bias correction uses step_count
        )
        self.m = {n: Tensor.zeros(p.shape, p.backend) for n, p in self.params.items()}
        self.v = {n: Tensor.zeros(p.shape, p.backend) for n, p in self.params.items()}
        backend = next(iter(self.params.values())).backend
        self._sumsq = Tensor.zeros((1,), backend)  # sum of squares of every gradient, on the device
        self._last_divisor = 1.0

    def grad_norm(self) -> float:
        """L2 norm of the gradients the last step() used (divided by its grad_divisor, before
        clipping). Reading it waits for the device, so callers ask only when they log it."""
        if self.step_count == 0:
            raise ConfigError("grad_norm() is known only after the first optimizer step")
        return math.sqrt(max(float(self._sumsq.numpy()[0]), 0.0)) / self._last_divisor

    def step(self, lr: float | None = None, grad_divisor: float = 1.0) -> None:
        """Apply one update with the gradients divided by grad_divisor (e.g. the number of accumulated
        micro-batches), clipped to global norm grad_clip."""
        lr = self.lr if lr is None else lr
        backend = self._sumsq.backend
        backend.zero_(self._sumsq.data)
        # summed in a fixed parameter order into one device scalar: reproducible, and no host sync
        for p in self.params.values():
            if p.grad is not None:
                backend.run("sum_squares", self._sumsq.data, p.grad.data, N=p.size)
        self._last_divisor = grad_divisor
        self.step_count += 1
        beta1, beta2 = self.betas
        for name, p in self.params.items():
            if p.grad is None:
                continue
            decay = self.weight_decay if p.ndim >= 2 else 0.0
            backend.run(
                "adamw_update", p.data, self.m[name].data, self.v[name].data, p.grad.data,
                self._sumsq.data, N=p.size, lr=lr, beta1=beta1, beta2=beta2, eps=self.eps,
                weight_decay=decay, grad_clip=self.grad_clip, grad_divisor=grad_divisor,
                step=self.step_count,
            )  # fmt: skip

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The moments as host arrays, named like PyTorch's AdamW state: NAME.exp_avg, NAME.exp_avg_sq."""
        arrays: dict[str, np.ndarray] = {}
        for name in self.params:
            arrays[f"{name}.exp_avg"] = self.m[name].numpy()
            arrays[f"{name}.exp_avg_sq"] = self.v[name].numpy()
        return arrays

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray], step: int, source: str) -> None:
        """Restore moments saved by state_arrays and the update count; names and shapes must match."""
        expected = {
            f"{n}.{k}": p.shape for n, p in self.params.items() for k in ("exp_avg", "exp_avg_sq")
        }
        missing = sorted(set(expected) - set(arrays))
        unknown = sorted(set(arrays) - set(expected))
        if missing or unknown:
            raise CheckpointError(
                f"{source} does not fit this model: missing {missing[:3]}, unexpected {unknown[:3]}"
            )
        for key, shape in expected.items():
            if tuple(arrays[key].shape) != shape:
                raise CheckpointError(
                    f"{source}: tensor {key} has shape {list(arrays[key].shape)}, expected {list(shape)}"
                )
        if not isinstance(step, int) or step < 0:
            raise CheckpointError(
                f"{source}: optimizer step must be a non-negative integer, got {step!r}"
            )
        for name in self.params:
            self.m[name].copy_from_numpy(arrays[f"{name}.exp_avg"])
            self.v[name].copy_from_numpy(arrays[f"{name}.exp_avg_sq"])
        self.step_count = step
