"""Causal multi-head self-attention over a fused qkv projection, in one kernel per direction, and its
forward-only cached form for generation (keys and values of earlier positions kept in a cache)."""

import numpy as np

from femto.errors import ShapeError
from femto.graph import Op, Tensor, check_float, grad_enabled


def qkv_sizes(op: str, qkv: Tensor, n_head: int) -> tuple[int, int, int]:
    """(B, T, C) of a fused qkv (B, T, 3C); ShapeError unless C splits into n_head heads."""
    check_float(op, "qkv", qkv)  # rank is checked here, with the expected layout
    if n_head < 1:
        raise ShapeError(f"{op}: n_head must be >= 1, got n_head={n_head} for qkv {qkv.shape}")
    if qkv.ndim != 3 or not qkv.shape[2] or qkv.shape[2] % 3 or (qkv.shape[2] // 3) % n_head:
        raise ShapeError(
            f"{op}: qkv must be (B, T, 3C) with C divisible by n_head={n_head}, got {qkv.shape}"
        )
    B, T, C3 = qkv.shape
    return B, T, C3 // 3


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
        B, T, C = qkv_sizes("attention", qkv, self.n_head)
        out = self.output((B, T, C))
        self.att = self.output((B, self.n_head, T, T))
        self.backend.run(
            "attention_forward", out.data, self.att.data, qkv.data, B=B, T=T, C=C, NH=self.n_head
        )
        self.out = out
        self.sizes = {"B": B, "T": T, "C": C, "NH": self.n_head}
        return out

    def backward(self, dout: Tensor) -> tuple:
        dqkv = self.grad_target(0, overwrite=True)
        self.backend.run(
            "attention_backward",
            dqkv.data,
            dout.data,
            self.inputs[0].data,
            self.att.data,
            self.out.data,
            **self.sizes,
            accumulate=dqkv.accumulate,
        )
        return self.input_grads()


def attention(qkv: Tensor, n_head: int) -> Tensor:
    return Attention(qkv.backend, n_head)(qkv)


class AttentionCached(Op):
    """Generation step: qkv (B, T, 3C) of new tokens at positions pos .. pos+T-1 -> out (B, T, C),
    or (B, 1, C) for the last token only when last_only.

    kcache and vcache are (B, NH, TMAX, HS); the kernel first writes the new keys and values at
    positions pos .. pos+T-1, then each new query attends to positions 0 .. its own. The kernel reads
    pos from `positions` (T,) int32, the new tokens' position ids on the device (the model's wpe
    lookup uses the same tensor), so a captured step can be replayed at another position by
    rewriting that tensor; `pos` here is the host's copy, for the checks. Forward only: it saves
    nothing, and refuses to run where autograd would record it.
    """

    kernels = ("attention_cached_forward",)

    def __init__(self, backend, n_head: int, pos: int, last_only: bool = False):
        super().__init__(backend)
        self.n_head, self.pos, self.last_only = n_head, pos, last_only

    def forward(self, qkv: Tensor, kcache: Tensor, vcache: Tensor, positions: Tensor) -> Tensor:
        B, T, C = qkv_sizes("attention_cached", qkv, self.n_head)
        NH = self.n_head
        for name, cache in (("kcache", kcache), ("vcache", vcache)):
            check_float("attention_cached", name, cache, 4)
            if cache.ndim != 4 or cache.shape[:2] != (B, NH) or cache.shape[3] != C // NH:
                raise ShapeError(
                    f"attention_cached: qkv {qkv.shape} needs {name} (B={B}, NH={NH}, TMAX, "
                    f"HS={C // NH}), got {cache.shape}"
                )
        TMAX = kcache.shape[2]
        if vcache.shape != kcache.shape or not 0 <= self.pos <= TMAX - T:
            raise ShapeError(
                f"attention_cached: {T} new positions at pos {self.pos} do not fit caches "
                f"{kcache.shape} / {vcache.shape} (need equal shapes and pos + T <= TMAX={TMAX})"
            )
        want = (self.pos, self.pos + T - 1) if T else None  # an empty tensor holds no range
        if positions.dtype != "int32" or positions.shape != (T,) or positions.value_range != want:
            raise ShapeError(
                f"attention_cached: {T} new positions at pos {self.pos} need positions int32 ({T},) "
                f"holding {self.pos}..{self.pos + T - 1}, got {positions.dtype} {positions.shape} "
                f"holding {positions.value_range}"
            )
        if self.last_only and T == 0:
            raise ShapeError(f"attention_cached: last_only needs a new token, got qkv {qkv.shape}")
        first = T - 1 if self.last_only else 0
        out = self.output((B, T - first, C))
        self.backend.run(
            "attention_cached_forward",
            out.data,
            kcache.data,
            vcache.data,
            qkv.data,
            positions.data,
            B=B,
            T=T,
            C=C,
            NH=NH,
            TMAX=TMAX,
            first=first,
        )
        return out

    def __call__(self, qkv: Tensor, kcache: Tensor, vcache: Tensor, positions: Tensor) -> Tensor:
        if grad_enabled() and qkv.requires_grad:
            raise RuntimeError("attention_cached is forward-only: run generation under no_grad()")
        return super().__call__(qkv, kcache, vcache, positions)


def attention_cached(
    qkv: Tensor,
    kcache: Tensor,
    vcache: Tensor,
    n_head: int,
    pos: int,
    positions: Tensor | None = None,
    last_only: bool = False,
) -> Tensor:
    """positions: the new tokens' position ids pos .. pos+T-1 as a device tensor (T,); uploaded here
    when not given. last_only: every new key and value is stored, but only the last query attends,
    giving out (B, 1, C) (all generation needs of a model's last block)."""
    if positions is None:
        T = qkv.shape[1] if qkv.ndim == 3 else 0
        positions = Tensor.from_numpy(np.arange(pos, pos + T, dtype=np.int32), qkv.backend)
    op = AttentionCached(qkv.backend, n_head, pos, last_only)
    return op(qkv, kcache, vcache, positions)
