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
        # da = dout, and db = dout too when b is not broadcast: the graph hands dout itself over
        # where it can, and the kernel adds into whatever gradient is left to write
        # (db sums dout over the leading axes when it is broadcast)
        da = self.grad_target(0, equals=dout)
        db = self.grad_target(1, equals=dout)
        if da is not None or db is not None:
            self.backend.run(
                "add_backward",
                da.data if da is not None else None,
                db.data if db is not None else None,
                dout.data,
                N=dout.size,
                M=self.inputs[1].size,
            )
        return self.input_grads()


def add(a: Tensor, b: Tensor) -> Tensor:
    return Add(a.backend)(a, b)
