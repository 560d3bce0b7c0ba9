"""Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p)."""

from femto.errors import ShapeError
from femto.graph import Op, Tensor, check_float


class Dropout(Op):
    """inp (N...) -> out (N...). The mask is a hash of (seed, flat index), so the same seed gives the
    same mask on every backend and thread count, and backward recomputes it instead of storing it."""

    kernels = ("dropout_forward", "dropout_backward")

    def __init__(self, backend, p: float, seed: int):
        super().__init__(backend)
        if not 0.0 <= p < 1.0:
            raise ShapeError(f"dropout: p must be in [0, 1), got {p}")
        self.p, self.seed = float(p), int(seed) & 0x7FFFFFFF

    def forward(self, inp: Tensor) -> Tensor:
        check_float("dropout", "inp", inp)
        out = self.output(inp.shape)
        self.backend.run(
            "dropout_forward", out.data, inp.data, N=inp.size, p=self.p, seed=self.seed
        )
        return out

    def backward(self, dout: Tensor) -> tuple:
        dinp = self.grad_of(0)
        self.backend.run(
            "dropout_backward", dinp.data, dout.data, N=dout.size, p=self.p, seed=self.seed
        )
        return (dinp,)


def dropout(inp: Tensor, p: float, seed: int) -> Tensor:
    """Identity when p == 0, so evaluation and dropout-free training record nothing."""
    if p == 0.0:
        return inp
    return Dropout(inp.backend, p, seed)(inp)
