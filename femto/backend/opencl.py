"""The OpenCL backend: device-resident buffers, kernels from kernels/<op>.cl run through pyopencl.

Same protocol as the CPU backend, so ops, graph and model never know which one runs. `LAUNCHES` maps
each C kernel name (csrc/femto.h) to the CL kernel(s) it enqueues and their geometry. No silent device
choice: "opencl" is the first GPU, else the first CPU driver, a simulator (Oclgrind) last (logged);
"opencl:P:D" is exactly that one.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from femto.backend.base import DTYPES, Capturing, dtype_name
from femto.errors import BackendUnavailable, KernelBuildError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install your GPU vendor's OpenCL driver (NVIDIA, AMD or Intel), or run on the CPU through PoCL "
    "with `pip install pocl-binary-distribution`"
)

# Work-group size of the reductions; every program is built with -DLOCAL_MAX=REDUCE_LOCAL, the bound
# the .cl files declare their __local scratch with, so the two cannot drift apart.
REDUCE_LOCAL = 256
# matmul tile shapes (TILE, TK, WPT) of kernels/matmul.cl: a work-group computes a TILE x TILE output
# tile stepping TK along K, each work-item a WPT x WPT block. The default is what runs untuned.
MATMUL_DEFAULT = (64, 16, 8)
# Work-group size of one-work-item-per-element kernels.
ELEMENTWISE_LOCAL = 64
# Column groups of embedding_backward: work-item (c, g) owns dweight[v, c] for every v with v % G == g.
EMBEDDING_GROUPS = 16
# Reductions over tokens split the rows into chunks of at least SPLIT_MIN_ROWS so that a launch has
# about SPLIT_TARGET_ITEMS work-items (or SPLIT_TARGET_TILES matmul tiles) however few outputs it has:
# enough for every compute unit of a large GPU. The count depends on the shapes only, never on the
# device, so a run sums in the same order everywhere; partial sums never exceed SPLIT_MAX_SCRATCH.
SPLIT_MIN_ROWS = 64
SPLIT_TARGET_ITEMS = 32768
SPLIT_TARGET_TILES = 256
SPLIT_MAX_SCRATCH = 1 << 24
# Work-groups of the first sum_squares pass (a fixed number, so the sum order never changes).
SUM_SQUARES_GROUPS = 64
# Kernel sizes are int arguments: tensors past 2**31 - 1 elements would overflow their index math.
MAX_ELEMENTS = 2**31 - 1


def _import_pyopencl() -> Any:
    try:
        import pyopencl
    except ImportError as exc:
        raise BackendUnavailable(
            f"the opencl device needs pyopencl ({exc}): pip install pyopencl, then {INSTALL_HINT}"
        ) from exc
    return pyopencl


def _platforms(cl: Any) -> list[Any]:
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:  # the ICD loader reports "no platform" as an error, not an empty list
        raise BackendUnavailable(f"no OpenCL platform found ({exc}): {INSTALL_HINT}") from exc
    if not platforms:
        raise BackendUnavailable(f"no OpenCL platform found: {INSTALL_HINT}")
    return platforms


def _devices(cl: Any, platform: Any) -> list[Any]:
    try:
        return platform.get_devices()
    except cl.Error:  # a platform with no device of any type raises DEVICE_NOT_FOUND
        return []


def _device_type(cl: Any, device: Any) -> str:
    """GPU, ACCEL, CPU, SIM (a simulator such as Oclgrind) or OTHER."""
    platform = device.platform.name.strip().lower()
    # Oclgrind claims every type bit at once (GPU | CPU | ACCELERATOR): it runs kernels in an
    # interpreter 100x slower than a CPU driver, so it must never pass for a GPU
    every_kind = device.type & cl.device_type.GPU and device.type & cl.device_type.CPU
    if "oclgrind" in platform or every_kind:
        return "SIM"
    # PoCL reports its CPU device as ALL | CPU, so test the bits rather than print the flag set
    for bit, label in ((cl.device_type.GPU, "GPU"), (cl.device_type.ACCELERATOR, "ACCEL"),
                       (cl.device_type.CPU, "CPU")):  # fmt: skip
        if device.type & bit:
            return label
    return "OTHER"


# What plain --device opencl prefers: a GPU, then an accelerator, then a real CPU driver (PoCL,
# Intel's), then anything else, and a simulator last; ties go to the first in `femto devices` order.
TYPE_PREFERENCE = ("GPU", "ACCEL", "CPU", "OTHER", "SIM")


def default_device(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The row of list_devices() that plain --device opencl picks (None when there is none)."""
    if not rows:
        return None
    return min(rows, key=lambda r: (TYPE_PREFERENCE.index(r["type"]), r["platform"], r["device"]))


def list_devices() -> list[dict[str, Any]]:
    """Every OpenCL device as {platform, device, platform_name, name, type, memory_bytes,
    compute_units, max_work_group_size, version}; platform and device are the P and D of opencl:P:D."""
    cl = _import_pyopencl()
    rows = []
    for p, platform in enumerate(_platforms(cl)):
        for d, device in enumerate(_devices(cl, platform)):
            rows.append(
                {
                    "platform": p,
                    "device": d,
                    "platform_name": platform.name.strip(),
                    "name": device.name.strip(),
                    "type": _device_type(cl, device),
                    "memory_bytes": int(device.global_mem_size),
                    "compute_units": int(device.max_compute_units),
                    "max_work_group_size": int(device.max_work_group_size),
                    "version": device.version.strip(),
                }
            )
    return rows


def _parse_device_spec(spec: str) -> tuple[int, int]:
    parts = spec.split(":")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise BackendUnavailable(
            f"bad OpenCL device {spec!r}: expected opencl:PLATFORM:DEVICE with two numbers, e.g. "
            "opencl:0:0 (see `femto devices`)"
        )
    return int(parts[0]), int(parts[1])


def choose_device(spec: str | None = None) -> Any:
    """The pyopencl device for 'P:D', or, with no spec, default_device's choice."""
    cl = _import_pyopencl()
    platforms = _platforms(cl)
    if spec is not None:
        p, d = _parse_device_spec(spec)
        if p >= len(platforms):
            raise BackendUnavailable(
                f"no OpenCL platform {p}: this machine has {len(platforms)} "
                f"(platforms 0..{len(platforms) - 1}, see `femto devices`)"
            )
        devices = _devices(cl, platforms[p])
        if d >= len(devices):
            raise BackendUnavailable(
                f"no device {d} on OpenCL platform {p} ({platforms[p].name.strip()}): it has "
                f"{len(devices)} device(s), see `femto devices`"
            )
        return devices[d]
    everything = {
        (p, d): dev for p, pf in enumerate(platforms) for d, dev in enumerate(_devices(cl, pf))
    }
    if not everything:
        raise BackendUnavailable(f"OpenCL platforms exist but none has a device: {INSTALL_HINT}")
    rows = [
        {"platform": p, "device": d, "type": _device_type(cl, dev)}
        for (p, d), dev in everything.items()
    ]
    best = default_device(rows)
    device = everything[best["platform"], best["device"]]
    log.info(
        "opencl: using %s (opencl:%d:%d, %s)",
        device.name.strip(), best["platform"], best["device"], best["type"],
    )  # fmt: skip
    return device


def find_kernels_dir() -> pathlib.Path:
    """kernels/ beside the package in a source checkout, femto/kernels inside an installed wheel."""
    package = pathlib.Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "kernels", package / "kernels"):
        if (candidate / "matmul.cl").exists():
            return candidate
    raise BackendUnavailable(
        f"OpenCL kernel sources not found in {package.parent / 'kernels'} or {package / 'kernels'}: "
        "reinstall femto (`pip install .`)"
    )


class CLBuffer:
    """A flat device buffer of `size` elements of `dtype` ('float32' or 'int32')."""

    __slots__ = ("buf", "dtype", "size")

    def __init__(self, buf: Any, size: int, dtype: str):
        self.buf = buf
        self.size = size
        self.dtype = dtype

    @property
    def nbytes(self) -> int:
        return self.size * 4

    def __repr__(self) -> str:
        return f"CLBuffer(size={self.size}, dtype={self.dtype})"


# One enqueue: (CL kernel name, global size, local size or None, arguments in CL order), optionally
# followed by a tuple of extra build options (the matmul tile shape).
Launch = tuple  # (str, tuple[int, ...], tuple[int, ...] | None, list[, tuple[str, ...]])


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def _pow2_at_most(n: int, cap: int) -> int:
    """The smallest power of two >= n, capped: the local size of a reduction over n items."""
    size = 1
    while size < n and size < cap:
        size *= 2
    return size


class OpenCLBackend(Capturing):
    """Buffers live on one OpenCL device; the queue is in order, so kernels see earlier results."""

    name = "opencl"

    def __init__(
        self,
        device: str | None = None,
        kernels_dir: str | os.PathLike | None = None,
        build_options: Sequence[str] = (),
        profile: bool = False,
        tune: bool | None = None,
    ):
        cl = _import_pyopencl()
        self._cl = cl
        self.device = choose_device(device)
        self.device_name = f"{self.device.name.strip()} ({self.device.platform.name.strip()})"
        self.context = cl.Context([self.device])
        # profile=True: every kernel launch keeps its event (start_profile/stop_profile), replays too
        self.profile = profile
        properties = cl.command_queue_properties.PROFILING_ENABLE if profile else 0
        self.queue = cl.CommandQueue(self.context, properties=properties)
        self._events: list[tuple[str, Any]] | None = None
        self.kernels_dir = pathlib.Path(kernels_dir) if kernels_dir else find_kernels_dir()
        self.build_options = tuple(build_options)
        self._kernels: dict[str, Any] = {}
        # (path, options) -> built program; the backend owns its context, so this is per context
        self._programs: dict[tuple[str, str], Any] = {}
        self._scratch: dict[str, CLBuffer] = {}
        # matmul tile shape per shape class: the tuner's cached choice for this device, else default
        self.matmul_params: dict[str, tuple[int, int, int]] = {}
        self.matmul_params.update(cached_matmul_params(self.device))
        # tune=None tunes a GPU on its first use (kept in the cache directory), never a CPU driver,
        # where the default is what the tests cover and `femto devices --tune` is the way to tune
        if tune is None:
            tune = _device_type(cl, self.device) == "GPU" and not self.matmul_params
        if tune:
            tune_matmul(self)
        # a sub-buffer's origin must be aligned to mem_base_addr_align, which OpenCL gives in bits
        self.view_alignment = max(1, int(self.device.mem_base_addr_align) // 32)
        # reductions halve the local size each step, so it must be a power of two
        self._reduce_local = REDUCE_LOCAL
        while self._reduce_local > int(self.device.max_work_group_size):
            self._reduce_local //= 2

    # ---- buffers ----

    def empty(self, n: int, dtype: str = "float32") -> CLBuffer:
        if dtype not in DTYPES:
            raise TypeError(f"unsupported dtype {dtype!r}: femto buffers are float32 or int32")
        if n > MAX_ELEMENTS:
            raise BackendUnavailable(
                f"a buffer of {n:,} elements exceeds the OpenCL backend's limit of {MAX_ELEMENTS:,} "
                "(kernel indices are 32-bit): use a smaller batch or model"
            )
        # OpenCL forbids zero-byte buffers; an empty tensor keeps a 4-byte buffer and size 0
        buf = self._cl.Buffer(self.context, self._cl.mem_flags.READ_WRITE, max(4 * n, 4))
        return CLBuffer(buf, n, dtype)

    def zeros(self, n: int, dtype: str = "float32") -> CLBuffer:
        buf = self.empty(n, dtype)
        self.zero_(buf)
        return buf

    def from_numpy(self, array: np.ndarray) -> CLBuffer:
        dtype = dtype_name(array)  # rejects float64 and friends
        host = np.ascontiguousarray(array).reshape(-1)
        buf = self.empty(host.size, dtype)
        if host.size:
            self._cl.enqueue_copy(self.queue, buf.buf, host, is_blocking=True)
        return buf

    def to_numpy(self, buf: CLBuffer) -> np.ndarray:
        self._forbid_readback()
        host = np.empty(buf.size, dtype=DTYPES[buf.dtype])
        if buf.size:
            self._cl.enqueue_copy(self.queue, host, buf.buf, is_blocking=True)
        return host

    def zero_(self, buf: CLBuffer) -> None:
        if buf.size:
            self._cl.enqueue_fill_buffer(self.queue, buf.buf, np.uint32(0), 0, buf.nbytes)
            self._record(
                self._cl.enqueue_fill_buffer, self.queue, buf.buf, np.uint32(0), 0, buf.nbytes
            )

    def copy_(self, dst: CLBuffer, src: CLBuffer) -> None:
        if dst.size != src.size or dst.dtype != src.dtype:
            raise TypeError(f"copy_ from {src} into {dst}: sizes and dtypes must match")
        if src.size:
            self._cl.enqueue_copy(self.queue, dst.buf, src.buf, byte_count=src.nbytes)
            self._record(self._copy_bytes, dst.buf, src.buf, src.nbytes)

    def upload_(self, dst: CLBuffer, host: np.ndarray) -> None:
        if dtype_name(host) != dst.dtype or host.size != dst.size:
            raise TypeError(f"upload_ of {host.dtype} {host.shape} into {dst}")
        if host.size:
            self._cl.enqueue_copy(self.queue, dst.buf, np.ascontiguousarray(host), is_blocking=True)

    def _copy_bytes(self, dst: Any, src: Any, nbytes: int) -> None:
        self._cl.enqueue_copy(self.queue, dst, src, byte_count=nbytes)

    def view(self, buf: CLBuffer, offset: int, n: int) -> CLBuffer:
        if offset % self.view_alignment or offset < 0 or n < 1 or offset + n > buf.size:
            raise ValueError(
                f"view [{offset}, {offset + n}) of a buffer of {buf.size} elements (offsets are "
                f"multiples of {self.view_alignment}, views not empty)"
            )
        return CLBuffer(buf.buf.get_sub_region(4 * offset, 4 * n), n, buf.dtype)

    def scratch(self, key: str, n: int) -> CLBuffer:
        """A float32 work buffer of at least n elements, reused across calls (the queue is in order)."""
        buf = self._scratch.get(key)
        if buf is None or buf.size < n:
            buf = self.empty(n)
            self._scratch[key] = buf
        return buf

    def synchronize(self) -> None:
        self.queue.finish()

    # ---- profiling (a backend made with profile=True) ----

    def start_profile(self) -> None:
        """Keep the event of every kernel launched from now on, until stop_profile()."""
        if not self.profile:
            raise RuntimeError("start_profile needs an OpenCLBackend made with profile=True")
        self._events = []

    def stop_profile(self) -> dict[str, tuple[int, float]]:
        """{CL kernel name: (launches, device milliseconds)} of the launches since start_profile(),
        from the events' start and end times (waits for the queue)."""
        self.queue.finish()
        events, self._events = self._events or [], None
        totals: dict[str, tuple[int, float]] = {}
        for cl_name, event in events:
            launches, ms = totals.get(cl_name, (0, 0.0))
            totals[cl_name] = (launches + 1, ms + (event.profile.end - event.profile.start) * 1e-6)
        return totals

    def _profiled(self, cl_name: str, kernel: Any) -> Callable[..., Any]:
        """A launcher for a capture that also keeps the replay's event while profiling."""

        def launch(*args: Any) -> None:
            event = kernel(*args)
            if self._events is not None:
                self._events.append((cl_name, event))

        return launch

    # ---- kernels ----

    def kernel_names(self) -> set[str]:
        return set(LAUNCHES)

    def _program(self, stem: str, extra: tuple[str, ...] = ()) -> Any:
        path = self.kernels_dir / f"{stem}.cl"
        # -I lets kernel files include the shared reduce.h; pyopencl's binary cache follows includes
        # a file's constants come from here as -D options (kernels/*.cl declare none of their own)
        extra = extra or DEFAULT_OPTIONS.get(stem, ())
        options = " ".join((
            "-cl-std=CL1.2", f'-I "{self.kernels_dir}"', f"-DLOCAL_MAX={REDUCE_LOCAL}",
            *self.build_options, *extra,
        ))  # fmt: skip
        key = (str(path), options)
        program = self._programs.get(key)
        if program is None:
            try:
                source = path.read_text()
            except OSError as exc:
                raise KernelBuildError(f"cannot read OpenCL kernel file {path}: {exc}") from exc
            program = self._cl.Program(self.context, source)
            try:
                # compiled binaries are cached on disk: by pyopencl, or by the driver where it keeps
                # its own cache (PoCL, NVIDIA), so a file compiles once per machine and device
                program.build(options=options)
            except self._cl.Error as exc:
                raise KernelBuildError(
                    f"OpenCL kernel file {path} failed to build for {self.device_name}:\n"
                    f"{_build_log(program, self.device, exc)}"
                ) from exc
            self._programs[key] = program
        return program

    def _kernel(self, cl_name: str, extra: tuple[str, ...] = ()) -> Any:
        kernel = self._kernels.get((cl_name, extra))
        if kernel is None:
            program = self._program(STEMS[cl_name], extra)
            kernel = self._cl.Kernel(program, cl_name)
            self._kernels[(cl_name, extra)] = kernel
        return kernel

    def matmul_tiles(self, M: int, N: int) -> tuple[int, int, int]:
        """(TILE, TK, WPT) for an M x N output: the tuned choice of its shape class, else the default."""
        return self.matmul_params.get(shape_class(M, N), MATMUL_DEFAULT)

    def build_all(self) -> None:
        """Compile every kernel file now (otherwise each is built on first use)."""
        for cl_name in STEMS:
            self._kernel(cl_name)

    def run(self, name: str, *bufs: Any, **scalars: float) -> None:
        """Enqueue kernel `name` with the C prototype's arguments: buffers (None = NULL), then scalars."""
        launches = LAUNCHES.get(name)
        if launches is None:
            raise KeyError(f"no OpenCL kernel {name!r}; known: {', '.join(sorted(LAUNCHES))}")
        for buf in bufs:
            if buf is not None and not isinstance(buf, CLBuffer):
                raise TypeError(
                    f"{name}: got {type(buf).__name__}, expected a buffer of this backend"
                )
        for cl_name, global_size, local_size, args, *extra in launches(self, bufs, scalars):
            if 0 in global_size:
                continue
            cl_args = [arg.buf if isinstance(arg, CLBuffer) else arg for arg in args]
            kernel = self._kernel(cl_name, extra[0] if extra else ())
            event = kernel(self.queue, global_size, local_size, *cl_args)
            if self._events is not None:
                self._events.append((cl_name, event))
            launcher = self._profiled(cl_name, kernel) if self.profile else kernel
            self._record(launcher, self.queue, global_size, local_size, *cl_args)


def _build_log(program: Any, device: Any, exc: Exception) -> str:
    """The compiler's log for `device`; pyopencl's error text (which also carries it) as a fallback,
    since on its cached build path the failed program object holds no log."""
    try:
        log_text = program.get_build_info(device, _import_pyopencl().program_build_info.LOG)
    except Exception:  # noqa: BLE001 - any failure here must not hide the original build error
        log_text = ""
    return (log_text or str(exc)).strip()


# ---- the matmul tuner: tile shapes timed per device, driver and shape class, cached on disk ----

# Outputs up to this many elements are "small" (A-D's layers at a few thousand tokens), above "large".
SMALL_OUTPUT = 1 << 19
# The shape (M output rows, N output columns, K) each class is timed at, on a GPU and elsewhere.
TUNE_SHAPES = {
    "GPU": {"small": (2048, 256, 64), "large": (8192, 2048, 512)},
    "other": {"small": (512, 128, 64), "large": (1024, 768, 256)},
}
# Candidates (TILE, TK, WPT): the default first, so a tie keeps it.
GPU_CANDIDATES = [
    MATMUL_DEFAULT, (32, 16, 4), (32, 8, 4), (32, 16, 2), (64, 8, 8), (64, 32, 8), (64, 16, 4),
    (128, 16, 8), (128, 8, 8), (64, 8, 4), (32, 32, 4),
]
CPU_CANDIDATES = [MATMUL_DEFAULT, (32, 16, 4), (64, 8, 8)]  # few: tuning a CPU driver stays cheap
TUNE_CACHE_FILE = "opencl-matmul-tiles.json"


def shape_class(M: int, N: int) -> str:
    return "small" if M * N <= SMALL_OUTPUT else "large"


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("FEMTO_CACHE_DIR") or pathlib.Path.home() / ".cache" / "femto")


def device_key(device: Any) -> str:
    """What a tuned choice is valid for: the device, its platform and the driver's version."""
    return " | ".join(
        (device.name.strip(), device.platform.name.strip(), device.driver_version.strip())
    )


def _read_tune_cache(path: pathlib.Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: tune afresh rather than fail
        return {}
    return data if isinstance(data, dict) else {}


def cached_matmul_params(device: Any) -> dict[str, tuple[int, int, int]]:
    """The tuner's choices for this device from the cache directory ({} when never tuned)."""
    entry = _read_tune_cache(cache_dir() / TUNE_CACHE_FILE).get(device_key(device), {})
    chosen = {}
    for klass, row in entry.items():
        params = row.get("params") if isinstance(row, dict) else None
        if isinstance(params, list) and len(params) == 3 and all(isinstance(p, int) for p in params):
            chosen[klass] = (params[0], params[1], params[2])
    return chosen


def _fits(be: OpenCLBackend, params: tuple[int, int, int]) -> bool:
    tile, tk, wpt = params
    if wpt < 1 or tile % wpt:
        return True  # let the build reject it (kernels/matmul.cl's #error), as a real failure
    rts = tile // wpt
    local_bytes = 2 * tile * tk * 4
    return rts * rts <= int(be.device.max_work_group_size) and local_bytes <= int(
        be.device.local_mem_size
    )


def tune_matmul(
    be: OpenCLBackend,
    candidates: Sequence[tuple[int, int, int]] | None = None,
    shapes: dict[str, tuple[int, int, int]] | None = None,
    repeats: int = 3,
    force: bool = False,
) -> dict[str, dict[str, Any]]:
    """Time matmul_forward for each candidate tile shape at each shape class's shape, keep the
    fastest that builds and matches numpy, store the choice in the cache directory and use it.

    Returns {class: {"params", "ms", "cached", "rejected": {candidate: reason}}}. A cached choice
    for this device and driver is reused unless force."""
    is_gpu = _device_type(be._cl, be.device) == "GPU"
    candidates = list(candidates or (GPU_CANDIDATES if is_gpu else CPU_CANDIDATES))
    shapes = shapes or TUNE_SHAPES["GPU" if is_gpu else "other"]
    path = cache_dir() / TUNE_CACHE_FILE
    key = device_key(be.device)
    cached = _read_tune_cache(path).get(key, {})
    results: dict[str, dict[str, Any]] = {}
    rng = np.random.default_rng(0)
    for klass, (M, N, K) in shapes.items():
        if not force and klass in cached and klass in cached_matmul_params(be.device):
            results[klass] = {**cached[klass], "cached": True}
            be.matmul_params[klass] = tuple(cached[klass]["params"])
            continue
        x = rng.standard_normal((M, K)).astype(np.float32)
        w = rng.standard_normal((N, K)).astype(np.float32)
        dout = rng.standard_normal((M, N)).astype(np.float32)
        x64, w64, dout64 = x.astype(np.float64), w.astype(np.float64), dout.astype(np.float64)
        wants = (x64 @ w64.T, dout64 @ w64, dout64.T @ x64)  # out, dinp, dweight
        bufs = [be.from_numpy(x), be.from_numpy(w)]
        dout_buf = be.from_numpy(dout)
        out, dinp, dweight = be.empty(M * N), be.empty(M * K), be.empty(N * K)
        best: tuple[float, tuple[int, int, int]] | None = None
        rejected: dict[str, str] = {}
        tuned = dict(be.matmul_params)
        for params in candidates:
            name = "x".join(map(str, params))
            if not _fits(be, params):
                rejected[name] = "exceeds the device's work-group or local memory size"
                continue
            # every product of the check runs with the candidate, whatever class its shape is
            be.matmul_params = {"small": params, "large": params}
            try:
                be.run("matmul_forward", out, *bufs, None, N=M, C=K, OC=N)
                be.zero_(dweight)
                be.run("matmul_backward", dinp, dweight, None, dout_buf, bufs[0], bufs[1],
                       N=M, C=K, OC=N, accumulate_dinp=0)  # fmt: skip
                gots = [be.to_numpy(b) for b in (out, dinp, dweight)]
            except (KernelBuildError, be._cl.Error) as exc:
                rejected[name] = f"failed: {str(exc).splitlines()[0][:120]}"
                continue
            finally:
                be.matmul_params = dict(tuned)
            error = max(
                np.max(np.abs(got - want.reshape(-1))) / max(np.max(np.abs(want)), 1e-30)
                for got, want in zip(gots, wants)
            )
            if not np.isfinite(error) or error > 1e-4:
                rejected[name] = f"wrong result (relative error {error:.2g})"
                continue
            be.matmul_params[klass] = params
            times = []
            for _ in range(repeats):
                be.synchronize()
                t0 = time.perf_counter()
                be.run("matmul_forward", out, *bufs, None, N=M, C=K, OC=N)
                be.synchronize()
                times.append(time.perf_counter() - t0)
            be.matmul_params = dict(tuned)
            ms = min(times) * 1000
            if best is None or ms < best[0]:
                best = (ms, params)
        if best is None:  # nothing usable: the default stays (it is what the tests cover)
            be.matmul_params.pop(klass, None)
            results[klass] = {"params": list(MATMUL_DEFAULT), "ms": None, "cached": False,
                              "rejected": rejected, "shape": [M, N, K]}  # fmt: skip
            continue
        be.matmul_params[klass] = best[1]
        results[klass] = {"params": list(best[1]), "ms": best[0], "cached": False,
                          "rejected": rejected, "shape": [M, N, K]}  # fmt: skip
    stored = _read_tune_cache(path)
    stored[key] = {
        k: {kk: vv for kk, vv in r.items() if kk != "cached"}
        for k, r in results.items()
        if r.get("ms") is not None
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stored, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache costs a re-tune next time, not the run
        log.warning("opencl: could not write the matmul tuning cache %s: %s", path, exc)
    return results


# ---- launch table: C kernel name -> the CL kernels it enqueues ----
# Each launch function gets (backend, buffers as passed to run, scalars by keyword) and returns the
# Launch tuples it enqueues (a KernelPlan is something else: a recording of launches to replay).
# Sizes travel as np.int32 because pyopencl rejects a bare Python int for an `int` argument.

i32, u32, f32 = np.int32, np.uint32, np.float32


def _elementwise(n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """One work-item per element. A fixed local size, with the global size rounded up to it (kernels
    guard with `if (i >= N) return;`): left to choose, a driver may pick tiny groups for odd n."""
    return (_round_up(n, ELEMENTWISE_LOCAL),), (ELEMENTWISE_LOCAL,)


def _rows(be: OpenCLBackend, rows: int, width: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """One work-group per row, reducing over `width` items."""
    local = _pow2_at_most(width, be._reduce_local)
    return (rows * local,), (local,)


def _tiles(be: OpenCLBackend, rows: int, cols: int):
    """matmul grid for a rows x cols output: dimension 0 walks output columns, dimension 1 rows, a
    TILE x TILE tile per work-group of (TILE / WPT)^2 work-items; and the build options of that shape."""
    tile, tk, wpt = be.matmul_tiles(rows, cols)
    rts = tile // wpt
    g0 = _round_up(cols, tile) // tile * rts
    g1 = _round_up(rows, tile) // tile * rts
    return (g0, g1), (rts, rts), matmul_options((tile, tk, wpt))


def matmul_options(params: tuple[int, int, int]) -> tuple[str, ...]:
    """The -D options that give kernels/matmul.cl its tile shape."""
    tile, tk, wpt = params
    return (f"-DTILE={tile}", f"-DTK={tk}", f"-DWPT={wpt}")


# build options of a file's launches that name none (matmul's dbias and sums share the default tiles)
DEFAULT_OPTIONS = {"matmul": matmul_options(MATMUL_DEFAULT)}


def _splits(rows: int, outputs: int, target: int, partial_size: int) -> tuple[int, int]:
    """(S, R): split a reduction over `rows` into S chunks of R rows (the last may be shorter) so that
    `outputs` * S reaches `target`, no chunk is under SPLIT_MIN_ROWS and S partial sums of
    `partial_size` elements fit in SPLIT_MAX_SCRATCH."""
    if rows < 1:  # nothing to sum: one split of nothing leaves the gradients as they are
        return 1, 1
    want = -(-target // max(outputs, 1))
    most = max(1, min(-(-rows // SPLIT_MIN_ROWS), SPLIT_MAX_SCRATCH // max(partial_size, 1)))
    S = max(1, min(want, most))
    R = -(-rows // S)
    return -(-rows // R), R  # R rounded up may leave fewer chunks


def _split_sum(be, cl_name: str, dst: CLBuffer, partial: CLBuffer, M: int, S: int) -> Launch:
    return (cl_name, *_elementwise(M), [dst, partial, i32(M), i32(S)])


def _matmul_forward(be, bufs, s) -> list[Launch]:
    out, inp, weight, bias = bufs
    N, C, OC = s["N"], s["C"], s["OC"]
    grid, local, options = _tiles(be, N, OC)
    args = [out, inp, weight, bias, i32(N), i32(C), i32(OC)]
    return [("matmul_forward", grid, local, args, options)]


def _matmul_backward(be, bufs, s) -> list[Launch]:
    dinp, dweight, dbias, dout, inp, weight = bufs
    N, C, OC = s["N"], s["C"], s["OC"]
    sizes = [i32(N), i32(C), i32(OC)]
    launches = []
    if dinp is not None:  # (N, C) (+)= dout (N, OC) @ weight (OC, C)
        args = [dinp, dout, weight, *sizes, i32(s["accumulate_dinp"])]
        grid, local, options = _tiles(be, N, C)
        launches.append(("matmul_backward_dinp", grid, local, args, options))
    if dweight is not None:  # (OC, C) += dout^T (OC, N) @ inp (N, C), split-K over N
        (g0, g1), local, options = _tiles(be, OC, C)
        tiles = (g0 // local[0]) * (g1 // local[1])
        S, R = _splits(N, tiles, SPLIT_TARGET_TILES, OC * C)
        dst = dweight if S == 1 else be.scratch("split_partials", S * OC * C)
        args = [dst, dout, inp, *sizes, i32(R), i32(S == 1)]
        launches.append(("matmul_backward_dweight", (g0, g1, S), (*local, 1), args, options))
        if S > 1:
            launches.append(_split_sum(be, "matmul_backward_sum", dweight, dst, OC * C, S))
    if dbias is not None:  # column sums of dout (N, OC), split over N
        S, R = _splits(N, OC, SPLIT_TARGET_ITEMS, OC)
        partial = be.scratch("split_partials", S * OC)
        grid = (_round_up(OC, ELEMENTWISE_LOCAL), S)
        args = [partial, dout, i32(N), i32(OC), i32(R)]
        launches.append(("matmul_backward_dbias", grid, (ELEMENTWISE_LOCAL, 1), args))
        launches.append(_split_sum(be, "matmul_backward_sum", dbias, partial, OC, S))
    return launches


def _embedding_forward(be, bufs, s) -> list[Launch]:
    out, ids, weight = bufs
    N, C = s["N"], s["C"]
    return [("embedding_forward", *_elementwise(N * C), [out, ids, weight, i32(N), i32(C)])]


def _embedding_backward(be, bufs, s) -> list[Launch]:
    dweight, dout, ids = bufs
    N, V, C = s["N"], s["V"], s["C"]
    groups = min(EMBEDDING_GROUPS, max(V, 1))
    S, R = _splits(N, C * groups, SPLIT_TARGET_ITEMS, V * C)
    dst = dweight if S == 1 else be.scratch("split_partials", S * V * C)
    args = [dst, dout, ids, i32(N), i32(V), i32(C), i32(groups), i32(R), i32(S == 1)]
    launches: list[Launch] = [("embedding_backward", (C, groups, S), None, args)]
    if S > 1:
        launches.append(_split_sum(be, "embedding_backward_sum", dweight, dst, V * C, S))
    return launches


def _add_forward(be, bufs, s) -> list[Launch]:
    out, a, b = bufs
    N, M = s["N"], s["M"]
    return [("add_forward", *_elementwise(N), [out, a, b, i32(N), i32(M)])]


def _add_backward(be, bufs, s) -> list[Launch]:
    da, db, dout = bufs
    N, M = s["N"], s["M"]
    launches = []
    if da is not None:
        launches.append(("add_backward_da", *_elementwise(N), [da, dout, i32(N), i32(M)]))
    if db is not None:
        launches.append(("add_backward_db", *_elementwise(M), [db, dout, i32(N), i32(M)]))
    return launches


def _layernorm_forward(be, bufs, s) -> list[Launch]:
    out, mean, rstd, inp, weight, bias = bufs
    N, C = s["N"], s["C"]
    return [
        (
            "layernorm_forward",
            *_rows(be, N, C),
            [out, mean, rstd, inp, weight, bias, i32(N), i32(C), f32(1.0 / C)],
        )
    ]


def _layernorm_backward(be, bufs, s) -> list[Launch]:
    dinp, dweight, dbias, dout, inp, weight, mean, rstd = bufs
    N, C = s["N"], s["C"]
    launches = []
    if dinp is not None:
        args = [dinp, dout, inp, weight, mean, rstd, i32(N), i32(C), f32(1.0 / C)]
        launches.append(("layernorm_backward_dinp", *_rows(be, N, C), args))
    if dweight is not None or dbias is not None:  # column sums over N, split over N
        S, R = _splits(N, C, SPLIT_TARGET_ITEMS, 2 * C)
        partial = be.scratch("split_partials", 2 * S * C)
        grid = (_round_up(C, ELEMENTWISE_LOCAL), S)
        args = [partial, dout, inp, mean, rstd, i32(N), i32(C), i32(R)]
        launches.append(("layernorm_backward_dparams", grid, (ELEMENTWISE_LOCAL, 1), args))
        args = [dweight, dbias, partial, i32(C), i32(S)]
        launches.append(("layernorm_backward_dparams_sum", *_elementwise(C), args))
    return launches


def _gelu_forward(be, bufs, s) -> list[Launch]:
    out, inp = bufs
    return [("gelu_forward", *_elementwise(s["N"]), [out, inp, i32(s["N"])])]


def _gelu_backward(be, bufs, s) -> list[Launch]:
    dinp, dout, inp = bufs
    args = [dinp, dout, inp, i32(s["N"]), i32(s["accumulate"])]
    return [("gelu_backward", *_elementwise(s["N"]), args)]


def _attention_forward(be, bufs, s) -> list[Launch]:
    out, att, qkv = bufs
    B, T, C, NH = s["B"], s["T"], s["C"], s["NH"]
    sizes = [i32(B), i32(T), i32(C), i32(NH)]
    return [("attention_forward", *_rows(be, B * NH * T, T), [out, att, qkv, *sizes])]


def _attention_backward(be, bufs, s) -> list[Launch]:
    dqkv, dout, qkv, att, out = bufs
    B, T, C, NH = s["B"], s["T"], s["C"], s["NH"]
    sizes = [i32(B), i32(T), i32(C), i32(NH)]
    # dscores (B, NH, T, T) = att * (dout.v - dout.out) / sqrt(HS), then two gathers from it:
    # dq by query row, dk and dv by key column, so every element of dqkv has one owner
    dscores = be.scratch("attention_dscores", B * NH * T * T)
    acc = i32(s["accumulate"])
    return [
        (
            "attention_backward_dscores",
            *_rows(be, B * NH * T, T),
            [dscores, dout, qkv, att, out, *sizes],
        ),
        ("attention_backward_dq", *_elementwise(B * T * C), [dqkv, dscores, qkv, *sizes, acc]),
        (
            "attention_backward_dkv",
            *_elementwise(B * T * C),
            [dqkv, dscores, dout, qkv, att, *sizes, acc],
        ),
    ]


def _attention_cached_forward(be, bufs, s) -> list[Launch]:
    out, kcache, vcache, qkv, positions = bufs
    B, T, C, NH, TMAX, first = s["B"], s["T"], s["C"], s["NH"], s["TMAX"], s["first"]
    sizes = [i32(B), i32(T), i32(C), i32(NH), i32(TMAX)]
    scores = be.scratch("attention_cached_scores", B * NH * T * TMAX)
    # sized by TMAX, not the position (which only the device reads), so a replay fits any position
    return [
        (
            "attention_cache_store",
            *_elementwise(B * T * C),
            [kcache, vcache, qkv, positions, *sizes],
        ),
        (
            "attention_cached_forward",
            *_rows(be, B * NH * (T - first), TMAX),
            [out, scores, kcache, vcache, qkv, positions, *sizes, i32(first)],
        ),
    ]


def _dropout_forward(be, bufs, s) -> list[Launch]:
    out, inp, seeds = bufs
    N = s["N"]
    args = [out, inp, seeds, i32(N), f32(s["p"]), i32(s["site"])]
    return [("dropout_forward", *_elementwise(N), args)]


def _dropout_backward(be, bufs, s) -> list[Launch]:
    dinp, dout, seeds = bufs
    N = s["N"]
    args = [dinp, dout, seeds, i32(N), f32(s["p"]), i32(s["site"])]
    return [("dropout_backward", *_elementwise(N), args)]


def _crossentropy_forward(be, bufs, s) -> list[Launch]:
    loss, logsumexp, logits, targets = bufs
    N, V = s["N"], s["V"]
    local = _pow2_at_most(N, be._reduce_local)
    return [
        ("crossentropy_forward", *_rows(be, N, V), [logsumexp, logits, i32(N), i32(V)]),
        (
            "crossentropy_loss",
            (local,),
            (local,),
            [loss, logsumexp, logits, targets, i32(N), i32(V)],
        ),
    ]


def _crossentropy_backward(be, bufs, s) -> list[Launch]:
    dlogits, dloss, logits, targets, logsumexp = bufs
    N, V = s["N"], s["V"]
    args = [dlogits, dloss, logits, targets, logsumexp, i32(N), i32(V)]
    return [("crossentropy_backward", *_elementwise(N * V), args)]


def _adamw_update(be, bufs, s) -> list[Launch]:
    param, m, v, grad, grad_sumsq = bufs
    N = s["N"]
    names = ("lr", "beta1", "beta2", "eps", "weight_decay", "grad_clip", "grad_divisor")
    hyper = [f32(s[k]) for k in names]
    args = [param, m, v, grad, grad_sumsq, i32(N), *hyper, i32(s["step"])]
    return [("adamw_update", *_elementwise(N), args)]


def _sum_squares(be, bufs, s) -> list[Launch]:
    out, inp = bufs
    N = s["N"]
    local = be._reduce_local
    partial = be.scratch("sum_squares_partial", SUM_SQUARES_GROUPS)
    groups = SUM_SQUARES_GROUPS
    final = _pow2_at_most(groups, local)
    return [
        ("sum_squares_partial", (groups * local,), (local,), [partial, inp, i32(N)]),
        ("sum_squares", (final,), (final,), [out, partial, i32(groups)]),
    ]


def _nonfinite_forward(be, bufs, s) -> list[Launch]:
    flag, inp = bufs
    return [("nonfinite_forward", *_elementwise(s["N"]), [flag, inp, i32(s["N"])])]


LAUNCHES: dict[str, Callable[..., list[Launch]]] = {
    "matmul_forward": _matmul_forward,
    "matmul_backward": _matmul_backward,
    "embedding_forward": _embedding_forward,
    "embedding_backward": _embedding_backward,
    "add_forward": _add_forward,
    "add_backward": _add_backward,
    "layernorm_forward": _layernorm_forward,
    "layernorm_backward": _layernorm_backward,
    "gelu_forward": _gelu_forward,
    "gelu_backward": _gelu_backward,
    "attention_forward": _attention_forward,
    "attention_backward": _attention_backward,
    "attention_cached_forward": _attention_cached_forward,
    "dropout_forward": _dropout_forward,
    "dropout_backward": _dropout_backward,
    "crossentropy_forward": _crossentropy_forward,
    "crossentropy_backward": _crossentropy_backward,
    "adamw_update": _adamw_update,
    "sum_squares": _sum_squares,
    "nonfinite_forward": _nonfinite_forward,
}

# CL kernel name -> the .cl file (stem) that defines it
STEMS: dict[str, str] = {
    "matmul_forward": "matmul",
    "matmul_backward_dinp": "matmul",
    "matmul_backward_dweight": "matmul",
    "matmul_backward_dbias": "matmul",
    "matmul_backward_sum": "matmul",
    "embedding_forward": "embedding",
    "embedding_backward": "embedding",
    "embedding_backward_sum": "embedding",
    "add_forward": "add",
    "add_backward_da": "add",
    "add_backward_db": "add",
    "layernorm_forward": "layernorm",
    "layernorm_backward_dinp": "layernorm",
    "layernorm_backward_dparams": "layernorm",
    "layernorm_backward_dparams_sum": "layernorm",
    "gelu_forward": "gelu",
    "gelu_backward": "gelu",
    "attention_forward": "attention",
    "attention_backward_dscores": "attention",
    "attention_backward_dq": "attention",
    "attention_backward_dkv": "attention",
    "attention_cache_store": "attention",
    "attention_cached_forward": "attention",
    "dropout_forward": "dropout",
    "dropout_backward": "dropout",
    "crossentropy_forward": "crossentropy",
    "crossentropy_loss": "crossentropy",
    "crossentropy_backward": "crossentropy",
    "adamw_update": "adamw",
    "sum_squares_partial": "adamw",
    "sum_squares": "adamw",
    "nonfinite_forward": "nonfinite",
}
