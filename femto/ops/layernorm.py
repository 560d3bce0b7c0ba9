"""Layer normalisation over the last axis, eps 1e-5 (PyTorch's default)."""

from femto.errors import ShapeError
from femto.graph import Op, Tensor, check_float


class LayerNorm(Op):
    """inp (..., C), weight (C), bias (C) or None -> out (..., C); saves mean (N) and rstd (N), N rows."""

    kernels = ("layernorm_forward", "layernorm_backward")

    def forward(self, inp: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        check_float("layernorm", "inp", inp)
        C = inp.shape[-1]
        if C == 0:  # the mean of no channels is undefined
            raise ShapeError(
                f"layernorm: inp {inp.shape} has no channels to normalise: C must be >= 1"
            )
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None and (t.dtype != "float32" or t.shape != (C,)):
                raise ShapeError(f"layernorm: inp {inp.shape} needs {name} ({C},), got {t.shape}")
        N = inp.size // C
        out = self.output(inp.shape)
        self.mean, self.rstd = self.output((N,)), self.output((N,))
        self.backend.run(
            "layernorm_forward",
            out.data,
            self.mean.data,
            self.rstd.data,
            inp.data,
            weight.data,
            bias.data if bias is not None else None,
            N=N,
            C=C,
        )
        self.sizes = {"N": N, "C": C}
        return out

    def __call__(self, inp: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return super().__call__(inp, weight, bias)

    def backward(self, dout: Tensor) -> tuple:
        inp, weight, bias = self.inputs
        grads = (self.grad_target(0), self.grad_target(1), self.grad_target(2))
        self.backend.run(
            "layernorm_backward",
            *(g.data if g is not None else None for g in grads),
            dout.data,
            inp.data,
            weight.data,
            self.mean.data,
            self.rstd.data,
            **self.sizes,
        )
        return self.input_grads()


def layernorm(inp: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return LayerNorm(inp.backend)(inp, weight, bias)
