"""The CPU backend: flat numpy buffers, kernels from the cffi extension femto._cpu (csrc/*.c, OpenMP).

The extension holds the kernels once per CPU path (baseline, AVX2+FMA, AVX-512) and picks the fastest
the CPU supports when it loads, or the one the FEMTO_CPU environment variable names; a FEMTO_CPU it
cannot honour makes CPUBackend() raise BackendUnavailable.

It checks on import that the extension exists and was built from the sources beside it (in a source
checkout), so a stale build fails loudly instead of running old kernels.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import platform
import sys
import weakref
from typing import Any

import numpy as np

from femto.backend.base import DTYPES, Capturing, dtype_name
from femto.backend.source_hash import source_hash
from femto.errors import BackendUnavailable, ExtensionBuildError

REBUILD_HINT = "rebuild it with `pip install -e .` (or `python build_ffi.py`) in the femto checkout"

# OpenMP threads that find no work spin before they sleep (libgomp: 300,000 turns, about a
# millisecond). Alone on a machine that saves a wake-up per parallel region; beside other busy
# processes a spinning thread holds the core the thread with work needs. Measured on 2 cores
# (bench/train_speed.py, config A, 2 threads, ms/step quiet / beside one busy process): libgomp's
# spin 18.0 / 193; sleeping at once (OMP_WAIT_POLICY=PASSIVE) 24.6 / 38.1; 1,000 turns 20.9 / 43.1.
# So femto's threads spin 1,000 turns, unless the user chose a policy. libgomp reads this when it
# loads, which is when the extension below loads (torch bundles its own copy, which it leaves alone).
WAIT_SPINCOUNT = "1000"
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = WAIT_SPINCOUNT

try:
    from femto import _cpu
except ImportError as exc:  # the extension is part of femto; without it nothing can run
    raise ExtensionBuildError(
        f"femto's C extension femto._cpu is not built ({exc}): {REBUILD_HINT}"
    ) from exc


def _checkout_source_hash() -> str | None:
    """The hash build_ffi.py would embed, when femto runs from a source checkout; None when installed."""
    csrc = pathlib.Path(__file__).resolve().parents[2] / "csrc"
    return source_hash(csrc) if (csrc / "femto.h").exists() else None


_built_hash = _cpu.ffi.string(_cpu.lib.femto_source_hash()).decode()
_wanted_hash = _checkout_source_hash()
if _wanted_hash is not None and _wanted_hash != _built_hash:
    raise ExtensionBuildError(
        f"femto._cpu was built from older sources (build {_built_hash}, csrc/ now {_wanted_hash}): "
        f"{REBUILD_HINT}"
    )

# kernel -> the names of its scalar parameters in femto.h, in order (build_ffi.py embeds them)
KERNEL_SCALARS: dict[str, tuple[str, ...]] = {
    name: tuple(filter(None, scalars.split(",")))
    for name, _, scalars in (
        entry.partition(":")
        for entry in _cpu.ffi.string(_cpu.lib.femto_kernel_scalars()).decode().split(";")
    )
}


def bind_scalars(name: str, scalars: dict[str, float]) -> list[float]:
    """run()'s keyword scalars in femto.h's parameter order; any missing, unknown or misspelled
    name is a TypeError naming the kernel's parameters, never a silent positional swap."""
    wanted = KERNEL_SCALARS[name]
    if len(scalars) == len(wanted):
        try:
            return [scalars[key] for key in wanted]
        except KeyError:
            pass
    raise TypeError(
        f"{name}: scalars {', '.join(scalars) or '(none)'} do not match the kernel's parameters "
        f"{', '.join(wanted) or '(none)'} (csrc/femto.h)"
    )


# ---- the CPU path: which build of the kernels runs (build_ffi.py compiles one per instruction set) ----

# every path build_ffi.py knows, slowest first; a build holds baseline and, on x86-64 with GCC, the rest
KNOWN_PATHS = ("baseline", "avx2", "avx512")
PATH_FEATURES = {"baseline": "no SIMD beyond the architecture's base", "avx2": "AVX2 and FMA",
                 "avx512": "AVX-512 F/BW/DQ/VL"}
BUILT_PATHS = tuple(_cpu.ffi.string(_cpu.lib.femto_cpu_paths_built()).decode().split(","))
SUPPORTED_PATHS = tuple(p for i, p in enumerate(BUILT_PATHS) if _cpu.lib.femto_cpu_path_supported(i))
OPENMP = bool(_cpu.lib.femto_openmp_enabled())


def cpu_path() -> str:
    """The path whose kernels run: the best this CPU supports, or the one FEMTO_CPU named."""
    return _cpu.ffi.string(_cpu.lib.femto_cpu_path()).decode()


def cpu_path_error() -> str | None:
    """Why the FEMTO_CPU the extension saw when it loaded cannot be honoured, or None."""
    status = _cpu.lib.femto_cpu_request_status()
    if status == 0:
        return None
    wanted = _cpu.ffi.string(_cpu.lib.femto_cpu_requested()).decode()
    if status == 2:
        return (
            f"FEMTO_CPU={wanted}: this CPU ({cpu_model()}) lacks {PATH_FEATURES[wanted]}; "
            f"it runs {', '.join(SUPPORTED_PATHS)} (unset FEMTO_CPU for the fastest)"
        )
    if wanted in KNOWN_PATHS:
        return (
            f"FEMTO_CPU={wanted}: this build of femto holds only the {', '.join(BUILT_PATHS)} kernels "
            "(the x86 paths are compiled on x86-64 with GCC); unset FEMTO_CPU"
        )
    return (
        f"FEMTO_CPU={wanted!r} is not a CPU path: use one of {', '.join(BUILT_PATHS)}, "
        "or unset it for the fastest this CPU runs"
    )


def cpu_model() -> str:
    """The processor's model name, as the OS reports it (for benchmark records and `femto devices`)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        try:
            brand = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True, text=True, check=False, timeout=5,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            brand = ""
        if brand:
            return brand
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_summary() -> str:
    """One line: the CPU, the kernel path in use and the others, threading."""
    threads = f"OpenMP, {_cpu.lib.femto_get_num_threads()} threads" if OPENMP else (
        "serial kernels (built without OpenMP)"
    )
    return (
        f"{cpu_model()}; kernels: {cpu_path()} (this build: {', '.join(BUILT_PATHS)}; "
        f"this CPU runs: {', '.join(SUPPORTED_PATHS)}); {threads}"
    )


# cffi's from_buffer checks contiguity but not the element type: the dtype is checked here first
_C_ARRAYS = {np.dtype(np.float32): "float[]", np.dtype(np.int32): "int32_t[]"}
_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.int32): "int32"}  # dtype.name is slow
# a recycled buffer per (dtype, size) beyond this many is left to the garbage collector
POOL_MAX_PER_SIZE = 16


class CPUBackend(Capturing):
    """Buffers are flat C-contiguous numpy arrays; run() passes their addresses to the C kernel."""

    name = "cpu"
    view_alignment = 16  # 64 bytes: a cache line, and one AVX-512 vector

    def __init__(self, num_threads: int | None = None):
        error = cpu_path_error()
        if error is not None:  # no kernel runs on a path other than the one asked for
            raise BackendUnavailable(error)
        kind = "OpenMP" if OPENMP else "serial"
        self.device_name = f"CPU ({kind} C kernels, {cpu_path()} path)"
        # free buffers by (dtype, size): activations and gradients of one step serve the next, so a
        # steady training loop allocates nothing and touches no fresh pages
        self._free: dict[tuple[str, int], list[np.ndarray]] = {}
        # the ownership of pooled buffers, counted explicitly: id(buffer) -> [buffer, owners]. own()
        # makes one owner of a fresh buffer, retain() adds one, release() drops one, and the last
        # release returns the buffer to a pool. The entry holds the buffer, so its id stays unique.
        # Buffers nobody owns (the optimizer's storage, a test's scratch) are never pooled.
        self._owners: dict[int, list] = {}
        # plans that hold buffers by bare address (see _keep): a buffer one of them uses is never
        # pooled again outside it, since its replays write it
        self._plans: weakref.WeakSet = weakref.WeakSet()
        self._kernels: dict[str, Any] = {}
        if num_threads is not None:
            self.set_num_threads(num_threads)

    @staticmethod
    def set_num_threads(n: int) -> None:
        _cpu.lib.femto_set_num_threads(int(n))

    @staticmethod
    def num_threads() -> int:
        return int(_cpu.lib.femto_get_num_threads())

    def empty(self, n: int, dtype: str = "float32") -> np.ndarray:
        plan = self._plan
        if plan is not None:  # capturing: the plan's own dead buffers first
            free = plan.free.get((dtype, n))
            if free:
                return free.pop()
        free = self._free.get((dtype, n))
        if free:
            return free.pop()
        return np.empty(n, dtype=DTYPES[dtype])

    def zeros(self, n: int, dtype: str = "float32") -> np.ndarray:
        buf = self.empty(n, dtype)
        self.zero_(buf)  # through zero_, so a capture records the fill
        return buf

    def own(self, buf: np.ndarray) -> None:
        """Make the caller the one owner of a buffer it just got from empty() or zeros() (a tensor
        allocating its data): its release() will return the buffer to the pool."""
        self._owners[id(buf)] = [buf, 1]

    def retain(self, buf: np.ndarray) -> None:
        """Add an owner to an owned buffer (another tensor sharing it); each retain() is matched by
        one release(). A buffer nobody owns is not pooled: a no-op."""
        entry = self._owners.get(id(buf))
        if entry is not None and entry[0] is buf:
            entry[1] += 1

    def release(self, buf: np.ndarray) -> None:
        """Drop one owner of an owned buffer (graph.Tensor calls this as a tensor that owns its
        buffer dies). After the last, a later empty() or zeros() of the same size
        reuses it, unless a kernel plan uses it: then it goes back only to that plan's own free
        list, and only while the plan is being captured, so its replays reuse it exactly as the capture
        did and nothing outside the plan ever gets it. A buffer nobody owns: a no-op."""
        entry = self._owners.get(id(buf))
        if entry is None or entry[0] is not buf:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del self._owners[id(buf)]
        key = (_DTYPE_NAMES[buf.dtype], buf.size)
        plan = self._plan
        if plan is not None and id(buf) in plan.keep:
            free = plan.free.setdefault(key, [])
        elif any(id(buf) in other.keep for other in self._plans):
            return
        else:
            free = self._free.setdefault(key, [])
        if len(free) < POOL_MAX_PER_SIZE:
            free.append(buf)

    def from_numpy(self, array: np.ndarray) -> np.ndarray:
        dtype_name(array)  # rejects float64 and friends before they can be reinterpreted as floats
        return np.array(array, dtype=array.dtype, order="C").reshape(-1)

    def to_numpy(self, buf: np.ndarray) -> np.ndarray:
        self._forbid_readback()
        return buf.copy()

    def zero_(self, buf: np.ndarray) -> None:
        buf.fill(0)
        if self._plan is not None:
            self._keep(buf)
            self._plan.calls.append((ctypes.memset, (buf.ctypes.data, 0, buf.nbytes)))

    def copy_(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src)
        if self._plan is not None:
            self._keep(dst)
            self._keep(src)
            self._plan.calls.append(
                (ctypes.memmove, (dst.ctypes.data, src.ctypes.data, src.nbytes))
            )

    def upload_(self, dst: np.ndarray, host: np.ndarray) -> None:
        if host.dtype != dst.dtype or host.size != dst.size:
            raise TypeError(f"upload_ of {host.dtype} {host.shape} into {dst.dtype} ({dst.size},)")
        np.copyto(dst, host.reshape(-1))

    def _keep(self, buf: np.ndarray) -> None:
        """Hold `buf` in the plan being captured (its calls hold bare addresses): it stays alive
        while the plan does, and release() keeps it out of the shared pool."""
        plan = self._plan
        plan.keep.setdefault(id(buf), buf)
        self._plans.add(plan)

    def view(self, buf: np.ndarray, offset: int, n: int) -> np.ndarray:
        # a view is not an owner: views are made of buffers nothing pools (the optimizer's storage)
        if offset % self.view_alignment or offset < 0 or offset + n > buf.size:
            raise ValueError(f"view [{offset}, {offset + n}) of a buffer of {buf.size} elements")
        return buf[offset : offset + n]

    def kernel_names(self) -> set[str]:
        return {
            name for name in dir(_cpu.lib) if name.endswith(("_forward", "_backward", "_update"))
        } | {"sum_squares"}

    def run(self, name: str, *bufs: Any, **scalars: float) -> None:
        """Call kernel `name` with the buffers (None becomes NULL), then the scalars, bound by their
        parameter names in csrc/femto.h (any keyword order)."""
        kernel = self._kernels.get(name)
        if kernel is None:
            kernel = self._kernels[name] = getattr(_cpu.lib, name)
        args = []
        from_buffer = _cpu.ffi.from_buffer
        for buf in bufs:
            if buf is None:
                args.append(_cpu.ffi.NULL)
                continue
            # cffi would happily read a float64 array as twice as many floats: check before casting
            c_array = _C_ARRAYS.get(buf.dtype)
            if c_array is None or not buf.flags.c_contiguous:
                raise TypeError(
                    f"{name}: buffer of dtype {buf.dtype} is not a contiguous float32/int32"
                )
            args.append(from_buffer(c_array, buf))
        args.extend(bind_scalars(name, scalars))
        kernel(*args)
        if self._plan is not None:
            for buf in bufs:
                if buf is not None:
                    self._keep(buf)
            # bare pointers: a from_buffer object would hold its array a second time
            cast = _cpu.ffi.cast
            pointers = [cast("void *", a) if i < len(bufs) else a for i, a in enumerate(args)]
            self._plan.calls.append((kernel, tuple(pointers)))

    def synchronize(self) -> None:
        pass
