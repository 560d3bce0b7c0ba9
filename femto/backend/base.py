"""The Backend protocol and the registry of backends, loaded lazily by name.

A buffer is whatever the backend allocates (a flat numpy array on the CPU, a device buffer on OpenCL);
code above this layer only passes buffers back to the backend that made them. No device is picked here.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

from femto.errors import BackendUnavailable

DTYPES = {"float32": np.float32, "int32": np.int32}

# name -> "module:Class"; the module is imported only when that backend is asked for
BACKENDS = {
    "cpu": "femto.backend.cpu:CPUBackend",
    "opencl": "femto.backend.opencl:OpenCLBackend",
}


class KernelPlan:
    """Device work recorded by a backend's capture(): each entry a function and its arguments, already
    converted for the device (kernel launches, buffer copies and fills), re-issued by replay(). The
    plan holds every buffer it touches, so none of them goes back to a buffer pool while it lives; a
    replay reads what those buffers hold then and overwrites what the recorded work wrote."""

    __slots__ = ("__weakref__", "calls", "free", "keep")

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        # for backends whose calls hold raw addresses (the CPU's): one reference to every buffer
        # the plan touches, by id, and the plan's own free list (buffers whose tensors died during
        # the capture, reused within it and by nothing else, as CUDA graphs' private pools are)
        self.keep: dict[int, Any] = {}
        self.free: dict[tuple[str, int], list[Any]] = {}

    def __len__(self) -> int:
        return len(self.calls)


# per thread: id(backend) -> the plan that thread is capturing on it
_capturing = threading.local()


class Capturing:
    """The capture()/replay() pair of both backends: while a block runs under capture(), the backend
    appends each call the capturing thread makes to the plan (and still makes it); calls from other
    threads are not recorded."""

    @property
    def _plan(self) -> KernelPlan | None:
        plans = getattr(_capturing, "plans", None)
        return plans.get(id(self)) if plans else None

    @contextlib.contextmanager
    def capture(self) -> Iterator[KernelPlan]:
        """Record the device work of the block: run(), copy_() and zero_() calls. Reading a buffer
        back (to_numpy) inside it is an error, since a replay could not repeat what the host did with
        the value. Shapes, scalars and buffers are fixed: replay only the same computation, with new
        contents written into the same input buffers."""
        plans = _capturing.__dict__.setdefault("plans", {})
        if id(self) in plans:
            raise RuntimeError("capture() blocks do not nest")
        plan = plans[id(self)] = KernelPlan()
        try:
            yield plan
        finally:
            del plans[id(self)]

    def _record(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._plan is not None:
            self._plan.calls.append((fn, args))

    def _forbid_readback(self) -> None:
        if self._plan is not None:
            raise RuntimeError(
                "a buffer is read back inside capture(): a replay cannot repeat what the host did "
                "with it (read results after the capture block)"
            )

    @staticmethod
    def replay(plan: KernelPlan) -> None:
        """Re-issue every recorded call in order, with the buffers and scalars of the capture."""
        for fn, args in plan.calls:
            fn(*args)


class Backend(Protocol):
    name: str
    device_name: str
    # a view's offset must be a multiple of this many elements (OpenCL's sub-buffer alignment)
    view_alignment: int

    def empty(self, n: int, dtype: str = "float32") -> Any: ...

    def zeros(self, n: int, dtype: str = "float32") -> Any: ...

    def from_numpy(self, array: np.ndarray) -> Any: ...

    def to_numpy(self, buf: Any) -> np.ndarray: ...

    def zero_(self, buf: Any) -> None: ...

    def copy_(self, dst: Any, src: Any) -> None: ...

    def upload_(self, dst: Any, host: np.ndarray) -> None:
        """Overwrite `dst` with a host array of its size and dtype. Not a device operation: a capture
        does not record it, so inputs written this way between replays are what the replays read."""
        ...

    def view(self, buf: Any, offset: int, n: int) -> Any:
        """A buffer aliasing elements [offset, offset + n) of `buf` (offset a multiple of
        view_alignment): kernels given the view read and write `buf`'s memory."""
        ...

    def run(self, name: str, *bufs: Any, **scalars: float) -> None: ...

    def capture(self) -> contextlib.AbstractContextManager[KernelPlan]: ...

    def replay(self, plan: KernelPlan) -> None: ...

    def kernel_names(self) -> set[str]: ...

    def synchronize(self) -> None: ...


def parse_device_spec(spec: str) -> tuple[str, str]:
    """(backend name, device part) of a spec, checked without opening anything: only opencl takes
    a :PLATFORM:DEVICE part, whose numbers the OpenCL backend checks when it opens the device."""
    name, _, rest = spec.partition(":")
    if name not in BACKENDS or (rest and name != "opencl"):
        raise BackendUnavailable(
            f"unknown device {spec!r}: expected one of {', '.join(sorted(BACKENDS))} "
            "(or opencl:PLATFORM:DEVICE)"
        )
    return name, rest


def get_backend(spec: str = "cpu", **options: Any) -> Backend:
    """Build a backend from a spec like 'cpu', 'opencl' or 'opencl:P:D' (platform P, device D)."""
    name, rest = parse_device_spec(spec)
    module_name, class_name = BACKENDS[name].split(":")
    module = importlib.import_module(module_name)
    backend_class = getattr(module, class_name)
    if rest:
        options["device"] = rest
    return backend_class(**options)


def dtype_name(array: np.ndarray) -> str:
    for name, dtype in DTYPES.items():
        if array.dtype == dtype:
            return name
    raise TypeError(f"unsupported dtype {array.dtype}: femto buffers are float32 or int32")
