"""Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p)."""

import numpy as np

from femto.errors import ConfigError, ShapeError
from femto.graph import Op, Tensor, check_float


class Dropout(Op):
    """inp (N...), seeds (S,) int32 -> out (N...). The mask is a hash of (seeds[site], flat index), so
    the same seed gives the same mask on every backend and thread count, and backward recomputes it
    instead of storing it. The seed is read on the device: a model keeps one per dropout site in one
    tensor and rewrites it each step, which lets a captured step replay with new masks."""

    kernels = ("dropout_forward", "dropout_backward")

    def __init__(self, backend, p: float, site: int = 0):
        super().__init__(backend)
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropout: p must be in [0, 1), got {p}")
        self.p, self.site = float(p), int(site)

    def forward(self, inp: Tensor, seeds: Tensor) -> Tensor:
        check_float("dropout", "inp", inp)
        if seeds.dtype != "int32" or seeds.ndim != 1 or not 0 <= self.site < seeds.size:
            raise ShapeError(
                f"dropout: site {self.site} needs int32 seeds (S,) with S > {self.site}, got "
                f"{seeds.dtype} {seeds.shape}"
            )
        out = self.output(inp.shape)
        self.backend.run(
            "dropout_forward", out.data, inp.data, seeds.data, N=inp.size, p=self.p, site=self.site
        )
        return out

    def __call__(self, inp: Tensor, seeds: Tensor) -> Tensor:
        return super().__call__(inp, seeds)

    def backward(self, dout: Tensor) -> tuple:
        seeds = self.inputs[1]
        dinp = self.grad_target(0)
        self.backend.run(
            "dropout_backward", dinp.data, dout.data, seeds.data, N=dout.size, p=self.p,
            site=self.site,
        )  # fmt: skip
        return self.input_grads()


def seed_tensor(seed: int, backend) -> Tensor:
    """One seed (its low 32 bits, as the kernels read them) as a seeds tensor (1,) for site 0."""
    bits = np.array([int(seed) & 0xFFFFFFFF], np.uint32).view(np.int32)
    return Tensor.from_numpy(bits, backend)


def dropout(inp: Tensor, p: float, seeds: Tensor | int, site: int = 0) -> Tensor:
    """Identity when p == 0, so evaluation and dropout-free training record nothing. `seeds` is a
    seeds tensor (the model's, one per site) or a single seed, uploaded here for site 0."""
    if p == 0.0:
        return inp
    if not isinstance(seeds, Tensor):
        seeds, site = seed_tensor(seeds, inp.backend), 0
    return Dropout(inp.backend, p, site)(inp, seeds)
