"""AdamW with global-norm gradient clipping, over parameters packed into one storage per group.

The optimizer packs what it is given: the parameters of each weight-decay group (matrices decay,
vectors do not) move into one contiguous buffer, their gradients into another, and the moments into
two more; every parameter's `.data` and `.grad` become views into them. A step is then two kernel
calls per group, whatever the number of parameters: one `sum_squares` and one `adamw_update` over the
whole group (and a data-parallel all-reduce, femto/distributed.py, has one gradient buffer per
group to reduce, see packed()). Views start at multiples of the backend's view_alignment; the gaps
between them stay zero, which no update moves.

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


class _Group:
    """Parameters sharing one weight decay, with their gradients and moments, each set in one buffer."""

    def __init__(self, params: dict[str, Tensor], weight_decay: float):
        self.weight_decay = weight_decay
        self.names = list(params)
        backend = next(iter(params.values())).backend
        align = backend.view_alignment
        offsets, size = {}, 0
        for name, p in params.items():
            offsets[name] = size
            size += -(-max(p.size, 1) // align) * align  # the next view starts aligned
        self.size = size
        self.offsets = offsets
        self.storage = {kind: backend.zeros(size) for kind in ("param", "grad", "m", "v")}
        # name -> {kind: Tensor viewing that kind's storage}
        self.views: dict[str, dict[str, Tensor]] = {}
        for name, p in params.items():
            self.views[name] = {
                kind: Tensor(backend.view(buf, offsets[name], p.size), p.shape, backend)
                for kind, buf in self.storage.items()
            }
            param_view, grad_view = self.views[name]["param"], self.views[name]["grad"]
            backend.copy_(param_view.data, p.data)
            if p.grad is not None:
                backend.copy_(grad_view.data, p.grad.data)
            p.data = param_view.data
            p.grad = grad_view


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
        self.step_count = 0  # number of updates applied; the kernel's bias correction uses it
        self._groups: list[_Group] = []
        for decays in (True, False):
            members = {n: p for n, p in self.params.items() if (p.ndim >= 2) == decays}
            if members:
                self._groups.append(_Group(members, weight_decay if decays else 0.0))
        views = {name: g.views[name] for g in self._groups for name in g.names}
        self.m = {n: views[n]["m"] for n in self.params}
        self.v = {n: views[n]["v"] for n in self.params}
        self._views = views
        backend = next(iter(self.params.values())).backend if self.params else None
        # sum of squares of every gradient, on the device
        self._sumsq = Tensor.zeros((1,), backend) if backend is not None else None
        self._last_divisor = 1.0

    def packed(self) -> list[dict]:
        """Each weight-decay group's packed storage, for code that moves whole buffers (a
        data-parallel all-reduce or broadcast): {"param", "grad", "m", "v": buffer, "size": N,
        "offsets": {name: offset, in packing order}}. Offsets are multiples of view_alignment."""
        return [{**g.storage, "size": g.size, "offsets": dict(g.offsets)} for g in self._groups]

    def grad_norm(self) -> float:
        """L2 norm of the gradients the last step() used (divided by its grad_divisor, before
        clipping). Reading it waits for the device, so callers ask only when they log it."""
        if self.step_count == 0:
            raise ConfigError("grad_norm() is known only after the first optimizer step")
        return math.sqrt(max(float(self._sumsq.numpy()[0]), 0.0)) / self._last_divisor

    def step(
        self, lr: float | None = None, grad_divisor: float = 1.0, skip_nonfinite: bool = False
    ) -> bool:
        """Apply one update with the gradients divided by grad_divisor (e.g. the number of accumulated
        micro-batches), clipped to global norm grad_clip. With skip_nonfinite, the gradient norm is
        read back first and a NaN or infinite one skips the update (moments and step count
        untouched): a clip factor of 0 times an infinite gradient would write NaN into every
        parameter. Returns whether the update was applied."""
        lr = self.lr if lr is None else lr
        if self._sumsq is None:
            return True
        self._check_packed()
        backend = self._sumsq.backend
        backend.zero_(self._sumsq.data)
        # summed in a fixed group order into one device scalar: reproducible, and no host sync
        for group in self._groups:
            backend.run("sum_squares", self._sumsq.data, group.storage["grad"], N=group.size)
        self._last_divisor = grad_divisor
        if skip_nonfinite and not math.isfinite(float(self._sumsq.numpy()[0])):
            return False
        self.step_count += 1
        beta1, beta2 = self.betas
        for group in self._groups:
            s = group.storage
            backend.run(
                "adamw_update", s["param"], s["m"], s["v"], s["grad"], self._sumsq.data,
                N=group.size, lr=lr, beta1=beta1, beta2=beta2, eps=self.eps,
                weight_decay=group.weight_decay, grad_clip=self.grad_clip,
                grad_divisor=grad_divisor, step=self.step_count,
            )  # fmt: skip
        return True

    def skip(self) -> None:
        """Count a step that applied no update (the divergence guard skipped it): step_count keeps
        equal to the training step, which is what a resumed run restores (load_state_arrays)."""
        self.step_count += 1

    def state_tensors(self) -> dict[str, list[Tensor]]:
        """The whole optimized state on the device, by kind ("parameters", "exp_avg", "exp_avg_sq"),
        one flat tensor per weight-decay group: what a check before a save looks at."""
        kinds = {"parameters": "param", "exp_avg": "m", "exp_avg_sq": "v"}
        return {
            label: [Tensor(g.storage[kind], (g.size,), self._sumsq.backend) for g in self._groups]
            for label, kind in kinds.items()
        }

    def _check_packed(self) -> None:
        """Every parameter must still live in this optimizer's storage, and its gradient too. A
        gradient that was dropped (free_grad) or replaced is put back: copied in, or zero if absent."""
        for name, p in self.params.items():
            views = self._views[name]
            if p.data is not views["param"].data:
                raise ConfigError(
                    f"parameter {name} no longer lives in this optimizer's storage (was it packed by "
                    "another optimizer, or its buffer replaced?): make one optimizer per model"
                )
            grad = p.grad
            if grad is not views["grad"]:
                if grad is None:
                    p.backend.zero_(views["grad"].data)
                else:
                    p.backend.copy_(views["grad"].data, grad.data)
                p.grad = views["grad"]

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
