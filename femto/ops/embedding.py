"""Embedding lookup: one table row per token id."""

import numpy as np

from femto.errors import ShapeError, TokenIdError
from femto.graph import Op, Tensor, check_float


class Embedding(Op):
    """ids (...) int32, weight (V, C) -> out (..., C). Backward is a race-free scatter-add into dweight."""

    kernels = ("embedding_forward", "embedding_backward")

    def forward(self, ids: Tensor, weight: Tensor) -> Tensor:
        if ids.dtype != "int32":
            raise ShapeError(f"embedding: ids must be int32, got {ids.dtype} of shape {ids.shape}")
        check_float("embedding", "weight", weight)
        if weight.ndim != 2:
            raise ShapeError(
                f"embedding: ids {ids.shape} need a weight table (V, C), got weight {weight.shape}"
            )
        V, C = weight.shape
        if ids.size:
            lo, hi = ids.id_range()
            if lo < 0 or hi >= V:
                bad = lo if lo < 0 else hi
                position = int(np.flatnonzero(self.backend.to_numpy(ids.data) == bad)[0])
                raise TokenIdError(
                    f"embedding: token id {bad} (at flat position {position} of ids {ids.shape}) "
                    f"is outside the table of {V} rows: ids must be in [0, {V - 1}]"
                )
        out = self.output((*ids.shape, C))
        self.backend.run("embedding_forward", out.data, ids.data, weight.data, N=ids.size, C=C)
        return out

    def backward(self, dout: Tensor) -> tuple:
        ids, weight = self.inputs
        dweight = self.grad_target(1)
        if dweight is None:  # ids have no gradient, so a frozen table leaves nothing to compute
            return (None, None)
        V, C = weight.shape
        self.backend.run(
            "embedding_backward", dweight.data, dout.data, ids.data, N=ids.size, V=V, C=C
        )
        return self.input_grads()


def embedding(ids: Tensor, weight: Tensor) -> Tensor:
    return Embedding(weight.backend)(ids, weight)
