"""Times one full training step (forward, backward, AdamW with clipping) of femto beside PyTorch eager.

For each config (A-D of issue 6) it runs femto and, when torch is installed (the optional `bench`
extra), the PyTorch twin in bench/torch_gpt.py, each in its own subprocess so peak RSS is per
framework, on the same thread count and batches. It prints the median ms/step over the timed steps,
tokens/s, model GFLOP/s, memory (RSS right after importing the framework, peak RSS, and the peak above
the import: what the model and its training use) and femto's ratios to PyTorch. It does not check
losses.
`--load N` keeps N busy processes spinning beside both frameworks (a loaded machine); `--omp-wait`
sets OMP_WAIT_POLICY (or GOMP_SPINCOUNT) for the femto workers, to measure OpenMP's idle waiting.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]

# name -> (vocab_size, block_size, n_embd, n_layer, n_head, batch_size), as issue 6 defines them
CONFIGS: dict[str, tuple[int, int, int, int, int, int]] = {
    "A": (65, 64, 64, 4, 4, 32),  # femtoGPT's default
    "B": (65, 64, 128, 4, 4, 12),  # nanoGPT's CPU 'baby GPT'
    "C": (1000, 64, 128, 8, 8, 32),  # femtoGPT's TinyStories model
    "D": (500, 128, 256, 6, 8, 16),
}
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def config_dict(name: str) -> dict[str, int]:
    V, T, C, L, NH, B = CONFIGS[name]
    return {
        "vocab_size": V, "block_size": T, "n_embd": C, "n_layer": L, "n_head": NH, "batch_size": B
    }  # fmt: skip


def flops_per_token(cfg: dict[str, int]) -> int:
    """nanoGPT's estimate (estimate_mfu): 6 N for the weights (N without wpe; the tied lm_head counts
    through wte) plus 12 L C T for attention's scores and weighted sum, forward and backward."""
    V, T, C, L = cfg["vocab_size"], cfg["block_size"], cfg["n_embd"], cfg["n_layer"]
    n_params = V * C + L * (12 * C * C + 13 * C) + 2 * C  # wte, blocks with biases, ln_f
    return 6 * n_params + 12 * L * C * T


def peak_rss_mib() -> float:
    """The process's peak resident set so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS: bytes; Linux: KiB


def rss_mib() -> float:
    """The process's resident set now, in MiB (Linux's /proc; elsewhere the peak so far, which right
    after the imports is the same but for what the imports freed)."""
    try:
        status = pathlib.Path("/proc/self/status").read_text()
    except OSError:
        return peak_rss_mib()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(kib) / 1024


# what each worker imports before it builds anything: femto's modules load its C extension, torch's
# its libraries
FRAMEWORK_MODULES = {
    "femto": ("numpy", "femto.backend.cpu", "femto.model", "femto.optim", "femto.train",
              "femto.sample"),
    "torch": ("numpy", "torch", "torch_gpt"),
}  # fmt: skip


def import_framework(framework: str) -> float:
    """Import the framework's modules; the RSS right after, in MiB (its import footprint)."""
    for name in FRAMEWORK_MODULES[framework]:
        importlib.import_module(name)
    return rss_mib()


def memory_record(rss_import: float, rss_build: float) -> dict[str, float]:
    """A worker's memory figures; the peak above the import is what the run itself added."""
    peak = peak_rss_mib()
    return {
        "rss_after_import_mib": rss_import,
        "rss_after_build_mib": rss_build,
        "peak_rss_mib": peak,
        "peak_above_import_mib": peak - rss_import,
    }


# ---- workers: each runs in its own process and prints one JSON line ----


def femto_trainer(cfg: dict[str, int], threads: int):
    import numpy as np

    from femto.backend.cpu import CPUBackend
    from femto.model import GPT, GPTConfig
    from femto.optim import AdamW
    from femto.train import TrainStep

    backend = CPUBackend(num_threads=threads)
    model_cfg = GPTConfig(**{k: v for k, v in cfg.items() if k != "batch_size"}, dropout=0.0)
    model = GPT(model_cfg, backend, np.random.default_rng(0))
    optimizer = AdamW(model.params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, grad_clip=1.0)
    micro_step = TrainStep(model)  # what `femto train` runs: forward + backward, replayed
    rng = np.random.default_rng(0)

    def step(x: np.ndarray, y: np.ndarray) -> float:
        value = micro_step(x, y, rng)
        optimizer.step()
        model.zero_grad()
        return value

    return step, lambda a: a


def torch_trainer(cfg: dict[str, int], threads: int):
    import torch
    from torch_gpt import TorchGPT

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = TorchGPT(
        cfg["vocab_size"], cfg["block_size"], cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    )
    optimizer = model.optimizer(lr=1e-3)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        _, loss = model(x, y)
        loss.backward()
        value = loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # femto's AdamW clips at 1.0 too
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return value

    return step, lambda a: torch.from_numpy(a.astype("int64"))


def run_worker(framework: str, config: str, threads: int, warmup: int, steps: int) -> dict:
    import numpy as np

    rss_import = import_framework(framework)
    cfg = config_dict(config)
    make = femto_trainer if framework == "femto" else torch_trainer
    step, convert = make(cfg, threads)
    rss_build = rss_mib()
    B, T, V = cfg["batch_size"], cfg["block_size"], cfg["vocab_size"]
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(warmup + steps):
        windows = rng.integers(0, V, size=(B, T + 1), dtype=np.int32)  # (B, T + 1)
        batches.append((convert(windows[:, :-1].copy()), convert(windows[:, 1:].copy())))
    times, losses = [], []
    for i, (x, y) in enumerate(batches):
        t0 = time.perf_counter()
        losses.append(step(x, y))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    tokens = B * T
    return {
        "framework": framework,
        "config": config,
        "threads": threads,
        "steps": steps,
        "ms_per_step": ms,
        "ms_min": min(times) * 1e3,
        "tokens_per_s": tokens / (ms / 1e3),
        "gflops": flops_per_token(cfg) * tokens / (ms / 1e3) / 1e9,
        **memory_record(rss_import, rss_build),
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


# ---- driver ----


# --omp-wait choices -> the environment a femto worker gets (libgomp reads it when it loads)
# ("femto": femto's own choice, OMP_WAIT_POLICY=PASSIVE unless the user set one, see
# femto/backend/cpu.py; "libgomp": libgomp's default, spinning 300,000 turns before sleeping)
# (None removes a variable the driver's environment may hold)
OMP_WAIT: dict[str, dict[str, str | None]] = {
    "femto": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None},
    "active": {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": None},
    "libgomp": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "300000"},
    "spin10k": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"},
}


# OpenMP's wait settings as the user gave them: importing femto here (cpu_record) sets femto's own
# default in this process, which a PyTorch worker must not inherit (its bundled libgomp reads them)
USER_WAIT = {var: os.environ.get(var) for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}


def worker_env(threads: int, extra: dict[str, str | None] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in USER_WAIT}
    env.update({k: v for k, v in USER_WAIT.items() if v is not None})
    for var in THREAD_VARS:
        env[var] = str(threads)
    for var, value in (extra or {}).items():
        if value is None:
            env.pop(var, None)
        else:
            env[var] = value
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def spawn(
    script: pathlib.Path, framework: str, config: str, threads: int, worker_args: list[str],
    extra_env: dict[str, str | None] | None = None,
) -> dict:  # fmt: skip
    """Run one worker of `script` in a fresh interpreter and return its JSON result."""
    cmd = [
        sys.executable, str(script), "--worker", framework, "--configs", config,
        "--threads", str(threads), *worker_args,
    ]  # fmt: skip
    env = worker_env(threads, extra_env)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{framework} worker for config {config} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def torch_wanted(args: argparse.Namespace) -> bool:
    """Whether to time PyTorch: unless --no-torch, when it is installed (else say so)."""
    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    if not args.no_torch and not with_torch:
        print("torch is not installed (pip install -e '.[bench]'): timing femto only")
    return with_torch


def best_of(results: list[dict]) -> dict:
    """Of repeated rounds, the one with the lowest median: the least disturbed by other load."""
    return min(results, key=lambda r: r["ms_per_step"])


MEMORY_NOTE = (
    "MiB: import = RSS right after importing the framework, peak = peak RSS, run = peak - import; "
    "ratios femto / PyTorch"
)


def memory_head() -> str:
    return f"{'import':>8}{'peak':>7}{'run':>7}{'peak vs':>9}{'run vs':>8}"


def memory_cells(r: dict, row: dict) -> str:
    """A worker's memory columns; on femto's line with PyTorch beside, the two ratios."""
    peak_ratio = run_ratio = ""
    if r["framework"] == "femto" and row.get("torch"):
        peak_ratio, run_ratio = f"{row['rss_ratio']:.2f}x", f"{row['run_rss_ratio']:.2f}x"
    return (
        f"{r['rss_after_import_mib']:>8.0f}{r['peak_rss_mib']:>7.0f}"
        f"{r['peak_above_import_mib']:>7.0f}{peak_ratio:>9}{run_ratio:>8}"
    )


def memory_ratios(femto: dict, torch: dict) -> dict[str, float]:
    """femto's peak RSS, and its peak above the import, over PyTorch's."""
    return {
        "rss_ratio": femto["peak_rss_mib"] / torch["peak_rss_mib"],
        "run_rss_ratio": femto["peak_above_import_mib"] / max(torch["peak_above_import_mib"], 1e-9),
    }


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'cfg':<4}{'framework':<10}{'ms/step':>9}{'tok/s':>10}{'GFLOP/s':>9}"
        f"{'speed vs torch':>16}{memory_head()}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        for r in (row["femto"], row.get("torch")):
            if r is None:
                continue
            speed = ""
            if r["framework"] == "femto" and row.get("torch"):
                speed = f"{row['speed_ratio']:.2f}x"
            lines.append(
                f"{row['config']:<4}{r['framework']:<10}{r['ms_per_step']:>9.1f}"
                f"{r['tokens_per_s']:>10.0f}{r['gflops']:>9.2f}{speed:>16}{memory_cells(r, row)}"
            )
    return "\n".join(lines)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options train_speed.py and sample_speed.py share."""
    parser.add_argument("--configs", default="A,B,C,D", help="comma-separated subset of A,B,C,D")
    parser.add_argument("--threads", type=int, default=2, help="threads for both frameworks (2)")
    parser.add_argument("--no-torch", action="store_true", help="time femto only")
    parser.add_argument("--json", metavar="PATH", help="also write the table as JSON here")
    parser.add_argument("--worker", choices=("femto", "torch"), help=argparse.SUPPRESS)


def parse_common_args(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> argparse.Namespace:
    args = parser.parse_args(argv)
    args.configs = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown or not args.configs:
        parser.error(f"--configs takes names from {','.join(CONFIGS)}, got {unknown or 'none'}")
    return args


def cpu_record() -> dict[str, str]:
    """The CPU's model and the femto kernel path the workers run (they inherit FEMTO_CPU)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from femto.backend import cpu

    error = cpu.cpu_path_error()
    if error is not None:
        raise SystemExit(error)
    return {"cpu": cpu.cpu_model(), "cpu_path": cpu.cpu_path()}


def write_json(path: str, benchmark: str, args: argparse.Namespace, rows: list[dict]) -> None:
    """The table as JSON, with the machine and the arguments that produced it."""
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    meta.update(cpu_record())
    record = {"benchmark": benchmark, **meta, "args": vars(args), "rows": rows}
    pathlib.Path(path).write_text(json.dumps(record, indent=1) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (3)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps; the median counts (20)")
    parser.add_argument("--rounds", type=int, default=1, help="alternate runs per framework (1)")
    parser.add_argument(
        "--load", type=int, default=0, help="busy processes spinning beside the timed ones (0)"
    )
    parser.add_argument(
        "--omp-wait", choices=sorted(OMP_WAIT), default="femto",
        help="OpenMP idle-wait setting of the femto workers (femto: femto's own)",
    )  # fmt: skip
    args = parse_common_args(parser, argv)
    if args.threads < 1 or args.steps < 1 or args.warmup < 0 or args.rounds < 1 or args.load < 0:
        parser.error("--threads, --steps and --rounds must be >= 1, --warmup and --load >= 0")
    return args


def start_load(n: int) -> list[subprocess.Popen]:
    """N processes that each keep one core busy (pure Python, no threads) until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(args.worker, args.configs[0], args.threads, args.warmup, args.steps)
        print(json.dumps(result))
        return
    with_torch = torch_wanted(args)
    frameworks = ["femto", "torch"] if with_torch else ["femto"]
    script = pathlib.Path(__file__).resolve()
    machine = cpu_record()
    rows = []
    load = start_load(args.load)
    try:
        for config in args.configs:
            rows.append(time_config(args, script, config, frameworks, with_torch))
    finally:
        stop_load(load)
    load_note = f", {args.load} busy process(es) beside" if args.load else ""
    wait_note = f", femto OpenMP wait {args.omp_wait}" if args.omp_wait != "femto" else ""
    print(
        f"training step, {args.threads} threads, median of {args.steps} steps after {args.warmup} "
        f"warm-up, best of {args.rounds} round(s){load_note}{wait_note}; speed ratio = PyTorch ms "
        f"/ femto ms\n{MEMORY_NOTE}\n"
        f"CPU: {machine['cpu']}; femto kernels: {machine['cpu_path']} path"
    )
    print(format_table(rows))
    if args.json:
        write_json(args.json, "train_speed", args, rows)


def time_config(
    args: argparse.Namespace, script: pathlib.Path, config: str, frameworks: list[str],
    with_torch: bool,
) -> dict:  # fmt: skip
    runs: dict[str, list[dict]] = {f: [] for f in frameworks}
    for _ in range(args.rounds):
        for framework in frameworks:
            worker_args = ["--warmup", str(args.warmup), "--steps", str(args.steps)]
            extra = OMP_WAIT[args.omp_wait] if framework == "femto" else None
            runs[framework].append(
                spawn(script, framework, config, args.threads, worker_args, extra)
            )
    row: dict[str, Any] = {"config": config, **config_dict(config)}
    row["femto"] = best_of(runs["femto"])
    if with_torch:
        row["torch"] = best_of(runs["torch"])
        row["speed_ratio"] = row["torch"]["ms_per_step"] / row["femto"]["ms_per_step"]
        row.update(memory_ratios(row["femto"], row["torch"]))
    print(f"config {config} done", file=sys.stderr)
    return row


if __name__ == "__main__":
    main()
