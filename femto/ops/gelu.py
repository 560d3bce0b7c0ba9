"""GELU with the tanh approximation (GPT-2's), elementwise."""

from femto.graph import Op, Tensor, check_float


class GELU(Op):
    """inp (N...) -> out (N...), same shape: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""

    kernels = ("gelu_forward", "gelu_backward")

    def forward(self, inp: Tensor) -> Tensor:
        check_float("gelu", "inp", inp)
        out = self.output(inp.shape)
        self.backend.run("gelu_forward", out.data, inp.data, N=inp.size)
        return out

    def backward(self, dout: Tensor) -> tuple:
        dinp = self.grad_target(0, overwrite=True)
        self.backend.run(
            "gelu_backward",
            dinp.data,
            dout.data,
            self.inputs[0].data,
            N=dout.size,
            accumulate=dinp.accumulate,
        )
        return self.input_grads()


def gelu(inp: Tensor) -> Tensor:
    return GELU(inp.backend)(inp)
