"""Linear layer: out = inp @ weight^T + bias, with nn.Linear's (out, in) weight layout."""

from femto.errors import ShapeError
from femto.graph import Op, Tensor, check_float


class Matmul(Op):
    """inp (..., C), weight (OC, C), bias (OC) or None -> out (..., OC).

    Leading axes of inp are flattened into N rows, so (B, T, C) inputs are the batched form.
    """

    kernels = ("matmul_forward", "matmul_backward")

    def forward(self, inp: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        check_float("matmul", "inp", inp)
        check_float("matmul", "weight", weight)  # rank: checked below, in a message naming inp
        C = inp.shape[-1]
        # N = size // C below: an empty contraction is a mistake, not a reason to divide by zero
        if C == 0:
            raise ShapeError(f"matmul: inp {inp.shape} has no input channels: C must be >= 1")
        if weight.ndim != 2 or weight.shape[1] != C:
            raise ShapeError(
                f"matmul: inp {inp.shape} needs weight (OC, {C}), got weight {weight.shape}"
            )
        OC = weight.shape[0]
        if bias is not None:
            check_float("matmul", "bias", bias)
            if bias.shape != (OC,):
                raise ShapeError(
                    f"matmul: weight {weight.shape} needs bias ({OC},), got bias {bias.shape}"
                )
        N = inp.size // C
        out = self.output((*inp.shape[:-1], OC))
        self.backend.run(
            "matmul_forward",
            out.data,
            inp.data,
            weight.data,
            bias.data if bias is not None else None,
            N=N,
            C=C,
            OC=OC,
        )
        self.sizes = {"N": N, "C": C, "OC": OC}
        return out

    def __call__(self, inp: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return super().__call__(inp, weight, bias)

    def backward(self, dout: Tensor) -> tuple:
        inp, weight, bias = self.inputs
        # dinp first: a fresh one is overwritten, then dweight sees it as existing if weight is inp
        dinp = self.grad_target(0, overwrite=True)
        dweight = self.grad_target(1)
        dbias = self.grad_target(2)
        self.backend.run(
            "matmul_backward",
            *(g.data if g is not None else None for g in (dinp, dweight, dbias)),
            dout.data,
            inp.data,
            weight.data,
            **self.sizes,
            accumulate_dinp=dinp.accumulate if dinp is not None else 1,
        )
        return self.input_grads()


def matmul(inp: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return Matmul(inp.backend)(inp, weight, bias)
