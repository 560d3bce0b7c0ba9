"""The divergence guard's finiteness test: one flag for any number of buffers, computed on the
device, so a training run can check its whole state before a save without reading it back."""

from femto.errors import ShapeError
from femto.graph import Op, Tensor, check_float


class NonFinite(Op):
    """inp_1 (N_1...), ..., inp_k (N_k...) -> flag (1,): 1.0 if any element of any input is NaN or
    +-inf, else 0.0. A test, not a function of the inputs' values: it has no gradient."""

    kernels = ("nonfinite_forward",)

    def forward(self, *inputs: Tensor) -> Tensor:
        if not inputs:
            raise ShapeError("nonfinite: needs at least one tensor, got none")
        for k, inp in enumerate(inputs):
            check_float("nonfinite", f"input {k}", inp, ndim_min=0)
        flag = Tensor.zeros((1,), self.backend)
        for inp in inputs:
            if inp.size:
                self.backend.run("nonfinite_forward", flag.data, inp.data, N=inp.size)
        return flag

    def backward(self, dout: Tensor) -> tuple:
        return (None,) * len(self.inputs)


def nonfinite(*inputs: Tensor) -> Tensor:
    """A (1,) flag: 1.0 when any input holds a NaN or an infinity."""
    if not inputs:
        raise ShapeError("nonfinite: needs at least one tensor, got none")
    return NonFinite(inputs[0].backend)(*inputs)
