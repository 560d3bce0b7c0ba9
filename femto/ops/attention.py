"""Causal multi-head self-attention over a fused qkv projection, in one kernel per direction."""

from femto.errors import ShapeError
from femto.graph import Op, Tensor, check_float


class Attention(Op):
    """qkv (B, T, 3C) -> out (B, T, C), with NH heads of size HS = C / NH.

    qkv holds q | k | v along its last axis, each (B, T, NH, HS). Scores are q.k / sqrt(HS) with future
    positions masked; saves att (B, NH, T, T), the softmax probabilities (zero above the diagonal).
    """

    kernels = ("attention_forward", "attention_backward")

    def __init__(self, backend, n_head: int):
        super().__init__(backend)
        self.n_head = n_head

    def forward(self, qkv: Tensor) -> Tensor:
        check_float("attention", "qkv", qkv, 3)
        if qkv.ndim != 3 or qkv.shape[2] % 3 or (qkv.shape[2] // 3) % self.n_head:
            raise ShapeError(
                f"attention: qkv must be (B, T, 3C) with C divisible by n_head={self.n_head}, "
                f"got {qkv.shape}"
            )
        B, T, C3 = qkv.shape
        C = C3 // 3
        out = self.output((B, T, C))
        self.att = self.output((B, self.n_head, T, T))
        self.backend.run(
            "attention_forward", out.data, self.att.data, qkv.data, B=B, T=T, C=C, NH=self.n_head
        )
        self.out = out
        self.sizes = dict(B=B, T=T, C=C, NH=self.n_head)
        return out

    def backward(self, dout: Tensor) -> tuple:
        dqkv = self.grad_of(0)
        self.backend.run(
            "attention_backward", dqkv.data, dout.data, self.inputs[0].data, self.att.data,
            self.out.data, **self.sizes,
        )
        return (dqkv,)


def attention(qkv: Tensor, n_head: int) -> Tensor:
    return Attention(qkv.backend, n_head)(qkv)
