"""Fused log-softmax + cross-entropy over the vocabulary, mean over every position."""

from femto.errors import ShapeError, TokenIdError
from femto.graph import Op, Tensor, check_float


class CrossEntropy(Op):
    """logits (..., V) float32, targets (...) int32 -> loss () = mean of -log softmax(logits)[target].

    N = targets.size rows; saves logsumexp (N) so backward rebuilds the softmax without storing it.
    """

    kernels = ("crossentropy_forward", "crossentropy_backward")

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_float("crossentropy", "logits", logits, 2)
        if targets.dtype != "int32" or targets.shape != logits.shape[:-1]:
            raise ShapeError(
                f"crossentropy: logits {logits.shape} need int32 targets {logits.shape[:-1]}, "
                f"got {targets.dtype} {targets.shape}"
            )
        V = logits.shape[-1]
        N = targets.size
        if N == 0 or V == 0:  # a mean over no rows, or a softmax over no classes, is undefined
            raise ShapeError(
                f"crossentropy: logits {logits.shape} need at least one row and one class (N, V >= 1)"
            )
        lo, hi = targets.id_range() or (0, 0)
        if lo < 0 or hi >= V:
            bad = lo if lo < 0 else hi
            raise TokenIdError(
                f"crossentropy: target id {bad} is outside the vocabulary [0, {V - 1}]"
            )
        loss = self.output(())
        self.logsumexp = self.output((N,))
        self.backend.run(
            "crossentropy_forward",
            loss.data,
            self.logsumexp.data,
            logits.data,
            targets.data,
            N=N,
            V=V,
        )
        self.sizes = {"N": N, "V": V}
        return loss

    def backward(self, dloss: Tensor) -> tuple:
        logits, targets = self.inputs
        dlogits = self.grad_target(0)
        self.backend.run(
            "crossentropy_backward",
            dlogits.data,
            dloss.data,
            logits.data,
            targets.data,
            self.logsumexp.data,
            **self.sizes,
        )
        return self.input_grads()


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return CrossEntropy(logits.backend)(logits, targets)
