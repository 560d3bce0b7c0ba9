"""Data-parallel training speed: 1 rank x 1 thread, 1 rank x 2 threads, 2 ranks x 1 thread (MPI).

For each config (A-D of issue 6) it times femto's training step (TrainStep replay, gradient all-reduce,
AdamW) in fresh processes: one rank with 1 and with 2 threads, and `mpiexec -n 2` with one thread per
rank, its gradients all-reduced either in one blocking Allreduce per packed buffer after backward
("blocking") or bucket by bucket with Iallreduce started while backward runs ("overlap"). It prints
tokens/s, the scaling of 2 ranks over 1, the bytes all-reduced per step, the all-reduce's own time
(timed alone) and the part of it the step waited for, and a projection to N machines from the
measured step: ring all-reduce moves 2(N-1)/N x bytes per rank, at 10 and 100 Gb/s.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

from train_speed import CONFIGS, best_of, config_dict, write_json

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODES = ("blocking", "overlap")
LINKS_GBIT = (10, 100)
MACHINES = (2, 8, 32)


def run_worker(config: str, mode: str, warmup: int, steps: int) -> dict | None:
    """Time `steps` training steps on this rank; rank 0 returns the result (the others None)."""
    import numpy as np

    from femto.distributed import connect
    from femto.model import GPT, GPTConfig
    from femto.optim import AdamW
    from femto.train import TrainStep

    comm = connect(os.environ)
    cfg = config_dict(config)
    backend = comm.backend("cpu")  # OMP_NUM_THREADS threads
    model_cfg = GPTConfig(**{k: v for k, v in cfg.items() if k != "batch_size"}, dropout=0.0)
    model = GPT(model_cfg, backend, np.random.default_rng(0))
    optimizer = AdamW(model.params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, grad_clip=1.0)
    micro_step = TrainStep(model)
    reducer = comm.gradient_reducer(backend, optimizer.packed(), overlap=mode == "overlap")
    B, T, V = cfg["batch_size"], cfg["block_size"], cfg["vocab_size"]
    rng = np.random.default_rng([1, comm.rank])  # each rank its own batches
    times, exposed = [], []
    for i in range(warmup + steps):
        windows = rng.integers(0, V, size=(B, T + 1), dtype=np.int32)  # (B, T + 1)
        x, y = windows[:, :-1].copy(), windows[:, 1:].copy()
        if comm.size > 1:  # every rank starts the step together: the times are the job's
            comm.comm.Barrier()
        t0 = time.perf_counter()
        waited = reducer.exposed_s if reducer is not None else 0.0
        loss = micro_step(x, y, rng, reducer)
        if reducer is not None:
            loss = comm.allreduce_sum(np.array([loss, 0.0]))[0] / comm.size
            reducer.finish()
        optimizer.step(grad_divisor=comm.size)
        model.zero_grad()
        backend.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            if reducer is not None:
                exposed.append(reducer.exposed_s - waited)
    packed = optimizer.packed()
    nbytes = 4 * sum(g["size"] for g in packed)
    alone = []
    if reducer is not None:  # the all-reduce by itself, on a quiet step: what the wire costs
        from mpi4py import MPI

        for _ in range(max(steps, 5)):
            comm.comm.Barrier()
            t0 = time.perf_counter()
            for group in packed:
                comm.comm.Allreduce(MPI.IN_PLACE, group["grad"], op=MPI.SUM)
            alone.append(time.perf_counter() - t0)
    if comm.rank != 0:
        return None
    ms = statistics.median(times) * 1e3
    return {
        "config": config,
        "mode": mode if comm.size > 1 else "single",
        "ranks": comm.size,
        "threads": backend.num_threads(),
        "ms_per_step": ms,
        "tokens_per_s": comm.size * B * T / (ms / 1e3),
        "allreduce_bytes": nbytes if comm.size > 1 else 0,
        "allreduce_ms": statistics.median(alone) * 1e3 if alone else 0.0,
        "exposed_ms": statistics.median(exposed) * 1e3 if exposed else 0.0,
        "buckets": len(reducer.buckets) if reducer is not None else 0,
        "final_loss": float(loss),
    }


def spawn(config: str, ranks: int, threads: int, mode: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if args.async_progress:
        env["MPIR_CVAR_ASYNC_PROGRESS"] = "1"
    command = [
        sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", "--configs", config,
        "--mode", mode, "--warmup", str(args.warmup), "--steps", str(args.steps),
    ]  # fmt: skip
    if ranks > 1:
        command = [args.mpiexec, "-n", str(ranks), *command]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker {config} ranks={ranks} mode={mode} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def projection(row: dict, machines: int, gbit: float) -> float:
    """Tokens/s of `machines` hosts, each running the measured 2-rank job: its measured step (with
    the all-reduce between its own ranks) plus a ring all-reduce of the gradient bytes between hosts
    at `gbit` (2(N-1)/N x bytes on each link; no latency term, no overlap)."""
    two = row["overlap"]
    step_s = two["ms_per_step"] / 1e3
    wire_s = 2 * (machines - 1) / machines * two["allreduce_bytes"] * 8 / (gbit * 1e9)
    return machines * two["tokens_per_s"] * step_s / (step_s + wire_s)


def format_tables(rows: list[dict]) -> str:
    head = (
        f"{'cfg':<4}{'1r x 1t':>10}{'1r x 2t':>10}{'2r block':>10}{'2r overlap':>11}"
        f"{'scaling':>9}{'vs 1rx2t':>9}{'grad MB':>9}{'AR ms':>7}{'wait blk':>9}{'wait ovl':>9}"
    )
    lines = ["tokens/s (2r = mpiexec -n 2, 1 thread each); AR ms = the all-reduce timed alone;",
             "wait = ms per step spent waiting for the all-reduce (blocking / overlapped)",
             head, "-" * len(head)]  # fmt: skip
    for row in rows:
        one, two_t, blk, ovl = row["1x1"], row["1x2"], row["blocking"], row["overlap"]
        lines.append(
            f"{row['config']:<4}{one['tokens_per_s']:>10.0f}{two_t['tokens_per_s']:>10.0f}"
            f"{blk['tokens_per_s']:>10.0f}{ovl['tokens_per_s']:>11.0f}"
            f"{ovl['tokens_per_s'] / one['tokens_per_s']:>8.2f}x"
            f"{ovl['tokens_per_s'] / two_t['tokens_per_s']:>8.2f}x"
            f"{ovl['allreduce_bytes'] / 1e6:>9.2f}{ovl['allreduce_ms']:>7.2f}"
            f"{blk['exposed_ms']:>9.2f}{ovl['exposed_ms']:>9.2f}"
        )
    lines += ["", "projection to N hosts of this 2-rank job, ring all-reduce, no overlap:"]
    head = f"{'cfg':<4}" + "".join(f"{f'N={n} {g}Gb/s':>19}" for n in MACHINES for g in LINKS_GBIT)
    lines += [head, "-" * len(head)]
    for row in rows:
        cells = ""
        for n in MACHINES:
            for g in LINKS_GBIT:
                tps = projection(row, n, g)
                eff = tps / (n * row["overlap"]["tokens_per_s"])
                cells += f"{f'{tps:,.0f} ({eff:.0%})':>19}"
        lines.append(f"{row['config']:<4}{cells}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="A,B,C,D", help="comma-separated subset of A,B,C,D")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (3)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps; the median counts (20)")
    parser.add_argument("--rounds", type=int, default=1, help="repeats of every run; best kept (1)")
    parser.add_argument("--mpiexec", default=None, help="the mpiexec to use (default: on PATH)")
    parser.add_argument(
        "--async-progress", action="store_true",
        help="MPIR_CVAR_ASYNC_PROGRESS=1: an MPICH progress thread per rank moves the overlapped "
        "all-reduce along during backward (it needs a core of its own)",
    )  # fmt: skip
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="overlap", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.configs = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown or not args.configs:
        parser.error(f"--configs takes names from {','.join(CONFIGS)}, got {unknown or 'none'}")
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1 and --warmup >= 0")
    if not args.worker:
        beside = pathlib.Path(sys.executable).with_name("mpiexec")
        args.mpiexec = args.mpiexec or (str(beside) if beside.exists() else shutil.which("mpiexec"))
        if args.mpiexec is None:
            parser.error('no mpiexec found: pip install -e ".[mpi]" (or pass --mpiexec)')
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(args.configs[0], args.mode, args.warmup, args.steps)
        if result is not None:
            print(json.dumps(result))
        return
    rows = []
    runs = {"1x1": (1, 1, "overlap"), "1x2": (1, 2, "overlap"),
            "blocking": (2, 1, "blocking"), "overlap": (2, 1, "overlap")}  # fmt: skip
    for config in args.configs:
        row: dict = {"config": config, **config_dict(config)}
        results: dict[str, list[dict]] = {key: [] for key in runs}
        for _ in range(args.rounds):
            for key, (ranks, threads, mode) in runs.items():
                results[key].append(spawn(config, ranks, threads, mode, args))
        for key in runs:
            row[key] = best_of(results[key])
        rows.append(row)
        print(f"config {config} done", file=sys.stderr)
    print(
        f"training step, median of {args.steps} steps after {args.warmup} warm-up, best of "
        f"{args.rounds} round(s); {os.cpu_count()} CPUs"
        + ("; MPICH async progress on" if args.async_progress else "")
    )
    print(format_tables(rows))
    if args.json:
        write_json(args.json, "distributed_speed", args, rows)


if __name__ == "__main__":
    main()
