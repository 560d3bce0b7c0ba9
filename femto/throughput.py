"""Model FLOPs per token and a device's measured matmul peak: the two halves of MFU.

MFU = flops_per_token x tokens/s / peak. The peak is what femto's own matmul kernel reaches on a
large square product on that device (an achievable peak, not a datasheet number); it is measured
once per device and thread count and cached in a JSON file. Nothing here prints.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import time

import numpy as np

from femto.backend.base import Backend, get_backend
from femto.fileio import write_atomic
from femto.graph import Tensor, no_grad
from femto.model import GPTConfig
from femto.ops.matmul import matmul

PEAK_FILE = "peak_flops.json"
PROBE_SIZE = 1024  # (1024, 1024) @ (1024, 1024)^T: 2.1 GFLOP, large enough for the kernel's peak
PROBE_SECONDS = 1.0  # the probe repeats the product for about this long and keeps the fastest


def flops_per_token(config: GPTConfig) -> float:
    """Training FLOPs per token, as nanoGPT's estimate_mfu (PaLM appendix B): 6N for the matmuls of
    forward and backward over the N non-embedding parameters, plus 12 L C T for attention's scores
    and weighted sums at full context."""
    L, C, T = config.n_layer, config.n_embd, config.block_size
    return 6.0 * config.num_params() + 12.0 * L * C * T


def device_key(backend: Backend) -> str:
    """The device's name, with the thread count for the CPU backend (the peak scales with it)."""
    threads = getattr(backend, "num_threads", None)
    if callable(threads):
        return f"{backend.device_name}, {threads()} threads"
    return backend.device_name


def measure_peak_flops(
    backend: Backend, size: int = PROBE_SIZE, seconds: float = PROBE_SECONDS
) -> float:
    """FLOP/s of the fastest of repeated (size, size) @ (size, size)^T products on `backend`."""
    rng = np.random.default_rng(0)
    inp = Tensor.from_numpy(rng.standard_normal((size, size), dtype=np.float32), backend)
    weight = Tensor.from_numpy(rng.standard_normal((size, size), dtype=np.float32), backend)
    flops = 2.0 * size**3
    best = float("inf")
    with no_grad():
        matmul(inp, weight)  # warm-up: kernel build, first-touch of buffers
        backend.synchronize()
        deadline = time.perf_counter() + seconds
        runs = 0
        while runs < 3 or time.perf_counter() < deadline:
            t0 = time.perf_counter()
            matmul(inp, weight)
            backend.synchronize()
            best = min(best, time.perf_counter() - t0)
            runs += 1
    return flops / best


def peak_flops(device: str, cache_dir: pathlib.Path) -> tuple[float, str, bool]:
    """(peak FLOP/s, device key, measured now?) for the --device spec `device`, from the cache
    file in cache_dir or by measuring it there and then (about a second)."""
    backend = get_backend(device)
    key = device_key(backend)
    path = pathlib.Path(cache_dir) / PEAK_FILE
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        table = {}  # missing or damaged: measure again, and rewrite it whole
    if not isinstance(table, dict):
        table = {}
    entry = table.get(key)
    known = isinstance(entry, dict) and isinstance(entry.get("flops"), (int, float))
    if known and entry["flops"] > 0:
        return float(entry["flops"]), key, False
    flops = measure_peak_flops(backend)
    table[key] = {
        "flops": flops,
        "probe": "matmul ({n}, {n}) @ ({n}, {n})^T, fastest run".format(n=PROBE_SIZE),
        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(table, indent=2) + "\n").encode("utf-8"))
    return flops, key, True
