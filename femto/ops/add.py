"""Elementwise add, with b broadcast over the leading axes of a (a bias, or a position table)."""

from femto.errors import ShapeError
from femto.graph import Op, Tensor, check_float


class Add(Op):
    """a (..., *S), b (*S) -> out, shaped like a. b's shape S must equal a's trailing axes; N = a.size,
    M = b.size, and out[i] = a[i] + b[i % M]. With S = a.shape it is a plain add (the residual)."""

    kernels = ("add_forward", "add_backward")

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        check_float("add", "a", a)
        check_float("add", "b", b)
        if b.ndim > a.ndim or a.shape[a.ndim - b.ndim :] != b.shape:
            raise ShapeError(f"add: b {b.shape} must match the trailing axes of a {a.shape}")
        out = self.output(a.shape)
        self.backend.run("add_forward", out.data, a.data, b.data, N=a.size, M=b.size)
        return out

    def backward(self, dout: Tensor) -> tuple:
        a, b = self.inputs
        # da is dout itself: hand dout over as a's gradient when a has none yet (the residual
        # stream's usual case) instead of zero-filling a buffer and adding dout into it
        passed = a is not b and self.pass_grad_to(0, dout)
        da = None if passed else self.grad_of(0)
        # M == N and b (the branch) has no gradient: b shares dout too (the graph copies it only if
        # a or b must be added into while the other still needs it), or gets a copy if it is a leaf
        copied = passed and (self.pass_grad_to(1, dout) or self.copy_grad_to(1, dout))
        db = None if copied else self.grad_of(1)
        if da is not None or db is not None:
            self.backend.run(
                "add_backward",
                da.data if da is not None else None,
                db.data if db is not None else None,
                dout.data,
                N=dout.size,
                M=b.size,
            )
        return (a.grad if passed else da, b.grad if copied else db)


def add(a: Tensor, b: Tensor) -> Tensor:
    return Add(a.backend)(a, b)
