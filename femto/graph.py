"""Tensors, ops and reverse-mode autograd. Bookkeeping only: every number is computed by a backend kernel.

A Tensor is a flat backend buffer plus a shape. An op applied while gradients are enabled records itself
on its output; `loss.backward()` walks those records in reverse topological order. An op's backward
asks Op.grad_target for each input's gradient buffer and whether to add into it or overwrite it; the
graph decides the rest. A gradient's first kernel overwrites an uninitialised buffer when it can
(no zero-fill), and an identity path's gradient is the upstream one itself, shared by several nodes
(both inputs of a residual add) and copied only if one of them must add into it while another still
needs it.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from femto.backend.base import DTYPES, Backend, dtype_name
from femto.errors import BackendMismatch, ShapeError, TokenIdError

_state = threading.local()


def grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Run ops without recording them: no graph, nothing saved for backward."""
    previous = grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous


def _as_int32_ids(array: np.ndarray) -> np.ndarray:
    """An integer array as int32, refusing values that do not fit: astype would wrap an id of
    2**32 + 1 to 1, which then passes every range check."""
    if array.dtype != np.int32 and array.size:
        lo, hi = int(array.min()), int(array.max())
        if lo < -(2**31) or hi > 2**31 - 1:
            raise TokenIdError(
                f"id {lo if lo < -(2**31) else hi} in an array of shape {array.shape} "
                "does not fit int32, femto's id type: ids must be below 2**31"
            )
    return array.astype(np.int32, copy=False)


class Tensor:
    """A float32 or int32 array living in a backend buffer."""

    __slots__ = (
        "backend", "data", "dtype", "grad", "grad_holders", "op", "pooled", "requires_grad", "shape",
        "value_range",
    )  # fmt: skip

    def __init__(
        self,
        data: Any,
        shape: Sequence[int],
        backend: Backend,
        dtype: str = "float32",
        requires_grad: bool = False,
    ):
        self.data = data
        self.shape = tuple(map(int, shape))  # map, not a generator: this runs for every tensor
        self.dtype = dtype
        self.backend = backend
        self.requires_grad = requires_grad
        self.grad: Tensor | None = None
        self.op: Op | None = None
        # True when this tensor is one of the owners of a buffer the backend pools: it releases
        # its ownership as it dies (Tensor.empty/zeros make one owner, reshaped() adds one)
        self.pooled = False
        self.value_range: tuple[int, int] | None = None  # (min, max) of int32 data, when known
        # as a gradient: how many graph nodes have this tensor as their .grad (Op.grad_target shares)
        self.grad_holders = 1

    @classmethod
    def from_numpy(cls, array: np.ndarray, backend: Backend, requires_grad: bool = False) -> Tensor:
        array = np.asarray(array)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        elif array.dtype.kind in "iu":
            array = _as_int32_ids(array)
        t = cls(backend.from_numpy(array), array.shape, backend, dtype_name(array), requires_grad)
        if t.dtype == "int32" and array.size:
            # known on the host for free; ops that index with ids check it without a device readback
            t.value_range = (int(array.min()), int(array.max()))
        return t

    def id_range(self) -> tuple[int, int] | None:
        """(min, max) of an int32 tensor (None when empty), from the host copy when it was made
        from numpy, else read back from the device."""
        if self.value_range is None and self.size:
            host = self.backend.to_numpy(self.data)
            self.value_range = (int(host.min()), int(host.max()))
        return self.value_range

    @classmethod
    def empty(cls, shape: Sequence[int], backend: Backend, dtype: str = "float32") -> Tensor:
        t = cls(backend.empty(math.prod(shape), dtype), shape, backend, dtype)
        t._own()
        return t

    @classmethod
    def zeros(cls, shape: Sequence[int], backend: Backend, dtype: str = "float32") -> Tensor:
        t = cls(backend.zeros(math.prod(shape), dtype), shape, backend, dtype)
        t._own()
        return t

    def _own(self) -> None:
        """Become the owner of a buffer the backend allocated for this tensor, on backends that
        pool buffers (an own/retain/release method set); others just free it when it dies."""
        own = getattr(self.backend, "own", None)
        if own is not None:
            own(self.data)
            self.pooled = True

    def reshaped(self, shape: Sequence[int]) -> Tensor:
        """The same elements under another shape of the same size: a tensor sharing this one's
        buffer, and owning it too, so the buffer outlives whichever of the two dies first."""
        if math.prod(shape) != self.size:
            raise ShapeError(f"reshape of a tensor of shape {self.shape} to {tuple(shape)}")
        t = Tensor(self.data, shape, self.backend, self.dtype)
        retain = getattr(self.backend, "retain", None)
        if self.pooled and retain is not None:
            retain(self.data)
            t.pooled = True
        return t

    def __del__(self) -> None:
        # Give up this tensor's ownership of a pooled buffer: after its last owner, the backend
        # reuses the buffer for a later tensor of the same size (unless a kernel plan uses it).
        # Backends without a pool (no release method) just free it.
        if self.pooled:
            release = getattr(self.backend, "release", None)
            if release is not None:
                release(self.data)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> np.ndarray:
        return self.backend.to_numpy(self.data).reshape(self.shape)

    def item(self) -> float:
        if self.size != 1:
            raise ShapeError(f"item() needs a tensor of one element, got shape {self.shape}")
        return float(self.numpy().reshape(-1)[0])

    def copy_from_numpy(self, array: np.ndarray) -> None:
        """Overwrite the contents in place (same shape), keeping the buffer other code may hold."""
        if tuple(array.shape) != self.shape:
            raise ShapeError(
                f"copy into tensor of shape {self.shape} from array of shape {array.shape}"
            )
        array = np.asarray(array)
        if self.dtype == "int32" and array.dtype.kind in "iu":
            array = _as_int32_ids(array)
        host = np.ascontiguousarray(array, DTYPES[self.dtype])
        self.backend.upload_(self.data, host)
        if self.dtype == "int32":
            self.value_range = (int(host.min()), int(host.max())) if host.size else None

    def zero_grad(self) -> None:
        """Zero the gradient in place, keeping its buffer for the next step."""
        if self.grad is not None:
            self.backend.zero_(self.grad.data)

    def free_grad(self) -> None:
        self.grad = None

    def ensure_grad(self) -> Tensor:
        if self.grad is None:
            self.grad = Tensor.zeros(self.shape, self.backend, self.dtype)
        return self.grad

    def backward(self, grad: Tensor | None = None) -> None:
        backward(self, grad)

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, backend={self.backend.name})"


class GradTarget(NamedTuple):
    """A gradient buffer a backward kernel writes, and how: accumulate 1 adds, 0 overwrites all."""

    tensor: Tensor
    accumulate: int

    @property
    def data(self) -> Any:
        return self.tensor.data


class Op:
    """One node of the graph. Subclasses implement forward (checks shapes, runs the forward kernel,
    saves what backward needs) and backward (runs the backward kernel into the inputs' gradients)."""

    kernels: tuple[str, ...] = ()

    def __init__(self, backend: Backend):
        self.backend = backend
        self.inputs: tuple[Tensor, ...] = ()

    def forward(self, *inputs: Tensor) -> Tensor:
        raise NotImplementedError

    def backward(self, dout: Tensor) -> tuple[Tensor | None, ...]:
        raise NotImplementedError

    def output(self, shape: Sequence[int], dtype: str = "float32") -> Tensor:
        return Tensor.empty(shape, self.backend, dtype)

    def grad_target(
        self, index: int, *, overwrite: bool = False, equals: Tensor | None = None
    ) -> GradTarget | None:
        """Where the backward kernel writes the gradient of input `index`: the one way an op asks.

        None when there is nothing to write: the input needs no gradient, or `equals` settled it.
        Otherwise a GradTarget: its buffer, and `accumulate` (1: add into it, 0: overwrite it all).

        overwrite=True: the kernel can overwrite every element (it takes an accumulate flag). The
        first contribution to a gradient then lands in an uninitialised buffer, which saves
        zero-filling it; without the flag a new gradient starts zeroed and accumulate is always 1.

        equals=dout: this input's gradient is exactly `dout` (an identity path, such as the
        residual add's). When the input has no gradient yet the graph settles it and returns None:
        an intermediate input shares `dout` itself (several inputs may share one tensor: each holder
        is counted, and one that must later add into it gets a private copy first), a leaf
        (parameter) gets a copy, since its buffer outlives the graph. Otherwise the kernel adds
        `dout` into the returned buffer."""
        inp = self.inputs[index]
        if inp is None or not inp.requires_grad:
            return None
        if inp.grad is None:
            if equals is not None and equals.shape == inp.shape and equals.dtype == inp.dtype:
                if inp.op is not None:
                    inp.grad = equals
                    equals.grad_holders += 1
                else:
                    # a copy reads dout once, where zero-fill + accumulate would write twice
                    inp.grad = Tensor.empty(inp.shape, self.backend, inp.dtype)
                    self.backend.copy_(inp.grad.data, equals.data)
                return None
            if overwrite:
                inp.grad = Tensor.empty(inp.shape, self.backend, inp.dtype)
                return GradTarget(inp.grad, 0)
            return GradTarget(inp.ensure_grad(), 1)
        grad = inp.grad
        if grad.grad_holders > 1:
            # shared with other nodes (a gradient passed to several inputs): a kernel is about to
            # add into it, and the others must not see that
            own = Tensor.empty(grad.shape, self.backend, grad.dtype)
            self.backend.copy_(own.data, grad.data)
            grad.grad_holders -= 1
            inp.grad = grad = own
        return GradTarget(grad, 1)

    def input_grads(self) -> tuple[Tensor | None, ...]:
        """The inputs' gradients, what backward returns once its kernels have run."""
        return tuple(
            inp.grad if inp is not None and inp.requires_grad else None for inp in self.inputs
        )

    def __call__(self, *inputs: Tensor) -> Tensor:
        for t in inputs:
            if t is not None and t.backend is not self.backend:
                raise BackendMismatch(f"{type(self).__name__}: inputs live on different backends")
        out = self.forward(*inputs)
        if grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
            self.inputs = inputs
            out.requires_grad = True
            out.op = self
        return out


def check_float(op: str, name: str, t: Tensor, ndim_min: int = 1) -> None:
    """Raise ShapeError unless `t` is a float32 tensor with at least `ndim_min` axes."""
    if t.dtype != "float32":
        raise ShapeError(f"{op}: {name} must be float32, got {t.dtype} of shape {t.shape}")
    if t.ndim < ndim_min:
        raise ShapeError(f"{op}: {name} needs at least {ndim_min} axes, got shape {t.shape}")


def topological_order(root: Tensor) -> list[Tensor]:
    """Tensors that lead to `root`, inputs before outputs; iterative so deep graphs cannot overflow."""
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node.op is not None:
            for inp in node.op.inputs:
                if inp is not None and inp.requires_grad and id(inp) not in visited:
                    stack.append((inp, False))
    return order


# backend -> the scalar 1.0 on that backend, uploaded once: a training step then sends the device
# nothing but its batch (a constant, never written: backward() seeds from a copy of it)
_UNIT_SEEDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _unit_seed(backend: Backend) -> Tensor:
    one = _UNIT_SEEDS.get(backend)
    if one is None:
        one = _UNIT_SEEDS[backend] = Tensor.from_numpy(np.ones(1, np.float32), backend)
    return one


def backward(
    loss: Tensor, grad: Tensor | None = None, on_leaf_grad: Callable[[Tensor], None] | None = None
) -> None:
    """Accumulate d(loss)/d(leaf) into every leaf's .grad, then free the graph below `loss`.

    `on_leaf_grad(leaf)` is called once per leaf as soon as its gradient is final: right after the
    backward of the last op that reads it, not when the reverse walk reaches the leaf itself (which a
    depth-first order may put after the whole network below it). A data-parallel run starts reducing
    a gradient there, while the rest of backward still runs."""
    if grad is None:
        if loss.size != 1:
            raise ShapeError(
                f"backward() seeds a scalar loss, got shape {loss.shape}: pass grad= explicitly"
            )
        grad = Tensor(_unit_seed(loss.backend).data, loss.shape, loss.backend)
    elif grad.shape != loss.shape:
        raise ShapeError(
            f"backward(): grad of shape {grad.shape} for a tensor of shape {loss.shape}"
        )
    # a private copy, made on the device: ops may hand the seed on as an input's gradient and
    # accumulate into it
    seed = Tensor.empty(grad.shape, loss.backend, grad.dtype)
    loss.backend.copy_(seed.data, grad.data)
    grad = seed
    if loss.op is None:
        raise ShapeError("backward(): this tensor was not produced by a recorded op (no_grad?)")
    loss.grad = grad
    order = topological_order(loss)
    readers: dict[int, int] = {}  # id(leaf) -> ops still to run backward that read it
    if on_leaf_grad is not None:
        for node in order:
            for inp in node.op.inputs if node.op is not None else ():
                if inp is not None and inp.requires_grad and inp.op is None:
                    readers[id(inp)] = readers.get(id(inp), 0) + 1
    for node in reversed(order):
        op = node.op
        if op is None:
            continue  # a leaf: its .grad is the result
        if node.grad is not None:
            grads = op.backward(node.grad)
            if len(grads) != len(op.inputs):
                raise AssertionError(
                    f"{type(op).__name__}.backward returned {len(grads)} gradients "
                    f"for {len(op.inputs)} inputs"
                )
            for inp, g in zip(op.inputs, grads):
                if g is not None and g.shape != inp.shape:
                    raise AssertionError(
                        f"{type(op).__name__}.backward: gradient of shape {g.shape} "
                        f"for an input of shape {inp.shape}"
                    )
        if readers:
            for inp in op.inputs:
                if inp is not None and id(inp) in readers:
                    readers[id(inp)] -= 1
                    if readers[id(inp)] == 0:
                        on_leaf_grad(inp)
        # the graph is single-use: drop saved activations and intermediate gradients as we go
        node.op = None
        if node.grad is not None:
            node.grad.grad_holders -= 1
        node.grad = None
