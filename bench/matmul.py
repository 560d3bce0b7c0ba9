"""Times femto's matmul kernels beside numpy's `@` (OpenBLAS in the wheels) on the same shapes.

For every GPT layer shape (N tokens per batch, C = n_embd, OC outputs) it times forward
`inp @ weight.T`, dinp `dout @ weight`, dweight `dout.T @ inp` and the whole backward, femto and numpy
alternating in one run on the same thread count; prints GFLOP/s and ratios (--json PATH writes them).
It calls the C kernels through the extension, not the autograd graph (bench/train_speed.py does that).
The header and the JSON name the CPU, femto's kernel path and OpenBLAS's kernel set. To time the AVX2
path against an AVX2 numpy on an AVX-512 machine: FEMTO_CPU=avx2 OPENBLAS_CORETYPE=Haswell.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

# numpy reads its BLAS thread count when it is imported, so the count is settled before that import.
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for femto and numpy (2)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds per shape (9)")
    parser.add_argument(
        "--batch-ms", type=float, default=4.0, help="each batch of calls lasts this"
    )
    parser.add_argument(
        "--settle-ms", type=float, default=150.0, help="pause before each library's batches (150)"
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=[768, 2048], help="N values")
    parser.add_argument("--embd", type=int, nargs="+", default=[64, 128, 256], help="C values")
    parser.add_argument("--vocab", type=int, nargs="+", default=[65, 500, 1000], help="lm_head OC")
    parser.add_argument("--json", metavar="PATH", help="also write the table as JSON here")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error(f"--threads and --repeats must be >= 1, got {args.threads} and {args.repeats}")
    return args


def limit_blas_threads(threads: int) -> Any:
    """Returns a threadpoolctl limiter when available; else pins the BLAS through its environment,
    re-executing this script if numpy was already imported with another setting."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        wanted = str(threads)
        if all(os.environ.get(var) == wanted for var in BLAS_THREAD_VARS):
            return None
        for var in BLAS_THREAD_VARS:
            os.environ[var] = wanted
        if "numpy" in sys.modules:
            os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
        return None
    return threadpool_limits(limits=threads, user_api="blas")


ARGS = parse_args() if __name__ == "__main__" else None
LIMITER = limit_blas_threads(ARGS.threads) if ARGS is not None else None

# In a checkout, time the kernels built beside this script, not some other installed femto.
ROOT = pathlib.Path(__file__).resolve().parents[1]
if (ROOT / "femto" / "__init__.py").exists():
    sys.path.insert(0, str(ROOT))

import numpy as np  # after the BLAS thread count is pinned

from femto.backend import cpu as cpu_backend
from femto.backend.cpu import CPUBackend

lib, ffi = cpu_backend._cpu.lib, cpu_backend._cpu.ffi


def layer_shapes(
    tokens: list[int], embd: list[int], vocab: list[int]
) -> list[tuple[str, int, int, int]]:
    """(layer, N, C, OC) for every linear layer of a GPT-2 block plus the lm_head."""
    shapes = []
    for N in tokens:
        for C in embd:
            shapes += [
                ("attn.c_attn", N, C, 3 * C),
                ("attn.c_proj", N, C, C),
                ("mlp.c_fc", N, C, 4 * C),
                ("mlp.c_proj", N, 4 * C, C),
            ]
            shapes += [(f"lm_head V={V}", N, C, V) for V in vocab]
    return shapes


def per_call_seconds(fn: Callable[[], Any], calls: int) -> float:
    fn()  # untimed: wakes this library's worker threads if they went to sleep
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def time_products(
    products: list[tuple[str, int, Callable[[], Any], Callable[[], Any]]], args: argparse.Namespace
) -> dict[str, tuple[float, float, float, float]]:
    """Per product: median seconds per call of femto and of numpy, their ratio and best-round ratio,
    over rounds that alternate the two so that load from other processes hits both alike. Each batch
    makes enough calls to fill --batch-ms.

    Both libraries keep their worker threads spinning for a while after a call (OpenBLAS for about
    2**28 cycles), which on a 2-core machine steals a core from whichever runs next; so a --settle-ms
    pause, which lets those threads go to sleep, precedes each library's batches."""
    batch_s, settle_s = args.batch_ms / 1e3, args.settle_ms / 1e3
    calls = {}
    for name, _, femto_fn, numpy_fn in products:
        one = min(per_call_seconds(femto_fn, 2), per_call_seconds(numpy_fn, 2))
        calls[name] = max(1, math.ceil(batch_s / max(one, 1e-7)))
    times: dict[str, tuple[list[float], list[float]]] = {p[0]: ([], []) for p in products}
    for round_ in range(args.repeats):
        # alternate which library goes first, so neither always runs right after the settle pause
        for side in (0, 1) if round_ % 2 == 0 else (1, 0):
            time.sleep(settle_s)
            for name, _, *fns in products:
                times[name][side].append(per_call_seconds(fns[side], calls[name]))
    # The ratio is the median over rounds of numpy/femto within a round: the two batches of a round
    # run a fraction of a second apart, so a burst of outside load mostly hits both or neither.
    return {
        name: (
            statistics.median(f),
            statistics.median(n),
            statistics.median(nt / ft for ft, nt in zip(f, n)),
            min(n) / min(f),
        )
        for name, (f, n) in times.items()
    }


def ptr(array: np.ndarray | None) -> Any:
    return ffi.NULL if array is None else ffi.cast("float *", array.ctypes.data)


def max_rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-30))


def bench_shape(layer: str, N: int, C: int, OC: int, args: argparse.Namespace) -> list[dict]:
    rng = np.random.default_rng(0)
    inp = rng.standard_normal((N, C), dtype=np.float32)  # (N, C)
    weight = rng.standard_normal((OC, C), dtype=np.float32)  # (OC, C)
    dout = rng.standard_normal((N, OC), dtype=np.float32)  # (N, OC)
    out = np.empty((N, OC), np.float32)
    dinp, dweight, dbias = (
        np.zeros((N, C), np.float32),
        np.zeros((OC, C), np.float32),
        np.zeros(OC, np.float32),
    )
    p_inp, p_w, p_dout, p_out = ptr(inp), ptr(weight), ptr(dout), ptr(out)
    p_dinp, p_dw, p_db = ptr(dinp), ptr(dweight), ptr(dbias)

    # Check each product once against numpy before timing it: a fast wrong kernel is no result.
    lib.matmul_forward(p_out, p_inp, p_w, ffi.NULL, N, C, OC)
    lib.matmul_backward(p_dinp, p_dw, p_db, p_dout, p_inp, p_w, N, C, OC, 1)
    errors = {
        "forward": max_rel_err(out, inp @ weight.T),
        "dinp": max_rel_err(dinp, dout @ weight),
        "dweight": max_rel_err(dweight, dout.T @ inp),
        "dbias": max_rel_err(dbias, dout.sum(axis=0)),
    }
    bad = {k: v for k, v in errors.items() if not v < 1e-4}
    if bad:
        raise SystemExit(f"matmul {layer} N={N} C={C} OC={OC}: femto disagrees with numpy: {bad}")

    # numpy writes into preallocated outputs too (out=), as femto's kernels do: neither side times
    # an allocation (numpy overwrites dweight and dbias where femto adds into them, its extra reads
    # counted against femto)
    np_out, np_dinp = np.empty_like(out), np.empty_like(dinp)
    np_dweight, np_dbias = np.empty_like(dweight), np.empty_like(dbias)
    weight_t, dout_t = weight.T, dout.T  # views, as femto reads the same memory transposed

    def numpy_backward() -> None:
        np.matmul(dout, weight, out=np_dinp)
        np.matmul(dout_t, inp, out=np_dweight)
        np.sum(dout, axis=0, out=np_dbias)

    def femto_backward(d_inp: Any, d_weight: Any, d_bias: Any) -> Callable[[], None]:
        # dinp is overwritten, as a training step does for a fresh activation gradient (and numpy)
        return lambda: lib.matmul_backward(d_inp, d_weight, d_bias, p_dout, p_inp, p_w, N, C, OC, 0)

    macs, null = N * C * OC, ffi.NULL
    products = [
        ("forward", 2 * macs, lambda: lib.matmul_forward(p_out, p_inp, p_w, null, N, C, OC),
         lambda: np.matmul(inp, weight_t, out=np_out)),
        ("dinp", 2 * macs, femto_backward(p_dinp, null, null),
         lambda: np.matmul(dout, weight, out=np_dinp)),
        ("dweight", 2 * macs, femto_backward(null, p_dw, null),
         lambda: np.matmul(dout_t, inp, out=np_dweight)),
        ("backward", 4 * macs + N * OC, femto_backward(p_dinp, p_dw, p_db), numpy_backward),
    ]  # fmt: skip
    rows = []
    timings = time_products(products, args)
    for product, flops, _, _ in products:
        femto_s, numpy_s, ratio, best_ratio = timings[product]
        rows.append(
            {
                "layer": layer, "N": N, "C": C, "OC": OC, "product": product,
                "femto_gflops": flops / femto_s / 1e9, "numpy_gflops": flops / numpy_s / 1e9,
                "ratio": ratio, "femto_ms": femto_s * 1e3, "numpy_ms": numpy_s * 1e3,
                # the fastest round of each: what the kernels reach when the machine is quiet
                "best_ratio": best_ratio,
            }
        )  # fmt: skip
    return rows


def blas_description() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        config = (
            np.show_config(mode="dicts") if np.lib.NumpyVersion(np.__version__) >= "1.26.0" else {}
        )
        blas = config.get("Build Dependencies", {}).get("blas", {})
        threads = os.environ.get("OPENBLAS_NUM_THREADS", "?")
        name = f"{blas.get('name', 'unknown BLAS')} {blas.get('version', '')}"
        return f"{name} (threads via env: {threads})"
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    return "; ".join(
        f"{p['internal_api']} {p['version']} {p.get('architecture') or ''} kernels, "
        f"{p['num_threads']} threads"
        for p in pools
    )




def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    summary = {}
    for product in ("forward", "dinp", "dweight", "backward"):
        ratios = [r["ratio"] for r in rows if r["product"] == product]
        best = [r["best_ratio"] for r in rows if r["product"] == product]
        summary[product] = {
            "min_ratio": min(ratios),
            "geomean_ratio": math.exp(sum(math.log(x) for x in ratios) / len(ratios)),
            "below_0.7": sum(x < 0.7 for x in ratios),
            "below_0.9": sum(x < 0.9 for x in ratios),
            "min_best_ratio": min(best),
        }
    return summary


def main(args: argparse.Namespace) -> None:
    error = cpu_backend.cpu_path_error()
    if error is not None:
        raise SystemExit(error)
    CPUBackend.set_num_threads(args.threads)
    blas = blas_description()
    cpu_name, cpu_path = cpu_backend.cpu_model(), cpu_backend.cpu_path()
    print(
        f"femto matmul ({cpu_path} kernels) vs numpy {np.__version__} ({blas}) on {cpu_name}, "
        f"{args.threads} threads"
    )
    print(
        f"median of {args.repeats} alternating rounds, batches of >= {args.batch_ms:g} ms, "
        f"{args.settle_ms:g} ms settle pauses"
    )
    header = (
        f"{'layer':<16}{'N':>6}{'C':>6}{'OC':>6}  {'product':<9}{'femto GF/s':>11}{'numpy GF/s':>11}"
        f"{'ratio':>7}{'best':>6}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for layer, N, C, OC in layer_shapes(args.tokens, args.embd, args.vocab):
        for row in bench_shape(layer, N, C, OC, args):
            rows.append(row)
            print(
                f"{layer:<16}{N:>6}{C:>6}{OC:>6}  {row['product']:<9}{row['femto_gflops']:>11.1f}"
                f"{row['numpy_gflops']:>11.1f}{row['ratio']:>7.2f}{row['best_ratio']:>6.2f}",
                flush=True,
            )
    summary = summarise(rows)
    print()
    for product, s in summary.items():
        print(
            f"{product:<9} ratio min {s['min_ratio']:.2f}  geomean {s['geomean_ratio']:.2f}  "
            f"shapes below 0.7: {s['below_0.7']}  below 0.9: {s['below_0.9']}  "
            f"(best-round ratio min {s['min_best_ratio']:.2f})"
        )
    if args.json:
        result = {
            "threads": args.threads, "repeats": args.repeats, "batch_ms": args.batch_ms,
            "settle_ms": args.settle_ms, "cpu": cpu_name, "cpu_path": cpu_path,
            "numpy": np.__version__, "blas": blas, "rows": rows, "summary": summary,
        }  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main(ARGS)
