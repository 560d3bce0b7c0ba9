"""Benchmark (not a test): training-step time and sampling tokens/s per device, OpenCL beside the CPU,
and beside PyTorch CUDA eager on the same GPU when torch sees one.

Usage: python bench/opencl_speed.py [--device opencl:0:0 ...] [--config E ...] [--profile] [--json]
[--save PATH] [--no-torch].
Configs A-D are bench/train_speed.py's, E a GPU-sized one; a step is what femto.train runs (forward, backward,
AdamW, synchronize) on random ids; sampling is femto.sample.generate at batch 1 with the KV cache.
When torch.cuda is available (and not --no-torch), the PyTorch twin of bench/torch_gpt.py runs the
same configs in fp32 (TF32 off) and the table shows torch's ms/step over femto's: above 1, femto is
faster. --profile runs the steps again on a queue with profiling enabled and prints the device
milliseconds per kernel per step from OpenCL events. The machine may be shared: compare rows of one
run only.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from femto.backend import get_backend
from femto.model import GPT, GPTConfig
from femto.optim import AdamW
from femto.sample import generate
from femto.train import TrainStep

# name -> (model config, batch size); A-D as in bench/train_speed.py, E fills a large GPU
CONFIGS = {
    "A": ({"vocab_size": 65, "block_size": 64, "n_embd": 64, "n_layer": 4, "n_head": 4}, 32),
    "B": ({"vocab_size": 65, "block_size": 64, "n_embd": 128, "n_layer": 4, "n_head": 4}, 12),
    "C": ({"vocab_size": 1000, "block_size": 64, "n_embd": 128, "n_layer": 8, "n_head": 8}, 32),
    "D": ({"vocab_size": 500, "block_size": 128, "n_embd": 256, "n_layer": 6, "n_head": 8}, 16),
    "E": ({"vocab_size": 500, "block_size": 256, "n_embd": 512, "n_layer": 8, "n_head": 8}, 32),
}


def train_step_times(
    model: GPT, batch: int, steps: int, warmup: int, before_timed: Callable[[], None] | None = None
) -> list[float]:
    """Seconds per training step, each ended by a synchronize (so queued kernels are counted);
    before_timed runs after the warm-up steps."""
    config, backend = model.config, model.backend
    optimizer = AdamW(model.params, lr=1e-3)
    micro_step = TrainStep(model)  # forward + backward, replayed after the first step
    rng = np.random.default_rng(0)
    times = []
    for i in range(warmup + steps):
        if i == warmup and before_timed is not None:
            before_timed()
        x = rng.integers(0, config.vocab_size, (batch, config.block_size), dtype=np.int32)
        y = rng.integers(0, config.vocab_size, (batch, config.block_size), dtype=np.int32)
        t0 = time.perf_counter()
        micro_step(x, y, rng)  # returns the loss, read back as train() does
        optimizer.step()
        model.zero_grad()
        backend.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def sampling_tokens_per_s(model: GPT, tokens: int) -> float:
    generate(model, [0], 8, 1.0, None, np.random.default_rng(0))  # warm-up: kernel builds, caches
    t0 = time.perf_counter()
    generate(model, [0], tokens, 1.0, None, np.random.default_rng(1))
    return tokens / (time.perf_counter() - t0)


def bench(device: str, config_name: str, steps: int, warmup: int, sample_tokens: int) -> dict:
    model_options, batch = CONFIGS[config_name]
    config = GPTConfig(**model_options, dropout=0.0)
    backend = get_backend(device)
    model = GPT(config, backend, np.random.default_rng(0))
    times = train_step_times(model, batch, steps, warmup)
    step_s = statistics.median(times)
    tokens = batch * config.block_size
    sample_tokens = min(sample_tokens, config.block_size - 1)  # stay inside one cached window
    return {
        "config": config_name,
        "device": device,
        "device_name": backend.device_name,
        "params": config.num_params(),
        "batch": batch,
        "tokens_per_step": tokens,
        "step_ms": step_s * 1000,
        "step_ms_min": min(times) * 1000,
        "train_tokens_per_s": tokens / step_s,
        "sample_tokens": sample_tokens,
        "sample_tokens_per_s": sampling_tokens_per_s(model, sample_tokens),
    }


def profile(device: str, config_name: str, steps: int, warmup: int) -> dict:
    """Device milliseconds per kernel per step, from the events of a profiling queue."""
    model_options, batch = CONFIGS[config_name]
    config = GPTConfig(**model_options, dropout=0.0)
    backend = get_backend(device, profile=True)
    model = GPT(config, backend, np.random.default_rng(0))
    times = train_step_times(model, batch, steps, warmup, before_timed=backend.start_profile)
    totals = backend.stop_profile()
    kernels = {
        name: {"launches": n / steps, "ms": ms / steps}
        for name, (n, ms) in sorted(totals.items(), key=lambda kv: -kv[1][1])
    }
    return {
        "wall_ms": statistics.median(times) * 1000,
        "launches": sum(k["launches"] for k in kernels.values()),
        "kernel_ms": sum(k["ms"] for k in kernels.values()),
        "kernels": kernels,
    }


def torch_cuda_ready() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def torch_cuda_bench(
    config_name: str, steps: int, warmup: int, sample_tokens: int, device: str = "cuda"
) -> dict:
    """The PyTorch twin on the first CUDA device, fp32 without TF32, as eager as femto's loop
    (device="cpu" only to check this function where there is no GPU)."""
    import torch

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from torch_gpt import TorchGPT

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cfg, batch = CONFIGS[config_name]
    model = TorchGPT(
        cfg["vocab_size"], cfg["block_size"], cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    ).to(device)
    optimizer = model.optimizer(lr=1e-3)
    generator = torch.Generator(device=device).manual_seed(0)
    times = []
    for i in range(warmup + steps):
        shape = (batch, cfg["block_size"])
        x = torch.randint(0, cfg["vocab_size"], shape, device=device, generator=generator)
        y = torch.randint(0, cfg["vocab_size"], shape, device=device, generator=generator)
        sync()
        t0 = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        loss.item()  # femto reads its loss back every step too
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as femto's AdamW clips
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    tokens = min(sample_tokens, cfg["block_size"] - 1)
    start = torch.zeros((1, 1), dtype=torch.long, device=device)
    model.generate(start, 8, use_cache=True)  # warm-up
    sync()
    t0 = time.perf_counter()
    model.generate(start, tokens, use_cache=True)
    sync()
    return {
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else device,
        "step_ms": statistics.median(times) * 1000,
        "step_ms_min": min(times) * 1000,
        "sample_tokens_per_s": tokens / (time.perf_counter() - t0),
    }


def print_table(rows: list[dict]) -> None:
    print(
        "| config | device | ms/step (median, min) | train tokens/s | sampling tokens/s (one window) "
        "| torch CUDA ms/step | speed vs torch | torch sampling tokens/s | sampling vs torch |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        t = r.get("torch_cuda")
        torch_cells = (
            f"{t['step_ms']:.1f} | {t['step_ms'] / r['step_ms']:.2f}x | "
            f"{t['sample_tokens_per_s']:,.0f} | "
            f"{r['sample_tokens_per_s'] / t['sample_tokens_per_s']:.2f}x"
            if t
            else "- | - | - | -"
        )
        print(
            f"| {r['config']} ({r['params']:,} params, batch {r['batch']}) | {r['device_name']} | "
            f"{r['step_ms']:.1f} ({r['step_ms_min']:.1f}) | {r['train_tokens_per_s']:,.0f} | "
            f"{r['sample_tokens_per_s']:,.0f} | {torch_cells} |"
        )
    # sampling stays inside one window (no slide, no recomputed window), so its tokens/s is far
    # above bench/sample_speed.py's 200-token figure and cannot be read against it
    print(
        "\nSampling: min(--sample-tokens, block_size - 1) tokens inside one cached window (63 for "
        "A-C by default), not comparable with bench/sample_speed.py's 200 tokens, most of which "
        "recompute a full window."
    )


def print_profile(r: dict) -> None:
    p = r["profile"]
    print(
        f"\nconfig {r['config']} on {r['device_name']}: wall {p['wall_ms']:.2f} ms/step, "
        f"{p['launches']:.0f} launches/step, {p['kernel_ms']:.2f} ms/step in kernels"
    )
    print(f"  {'kernel':<36} {'launches':>8} {'ms/step':>9} {'share':>6}")
    for name, k in p["kernels"].items():
        share = k["ms"] / p["kernel_ms"] if p["kernel_ms"] else 0.0
        print(f"  {name:<36} {k['launches']:>8.0f} {k['ms']:>9.3f} {share:>6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", action="append", help="cpu, opencl or opencl:P:D (repeatable)")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS), help="repeatable")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median shown)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (kernel builds)")
    parser.add_argument("--sample-tokens", type=int, default=200, help="capped at block_size - 1")
    parser.add_argument("--profile", action="store_true", help="GPU ms per kernel (OpenCL rows)")
    parser.add_argument("--no-torch", action="store_true", help="never time PyTorch CUDA")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--save", metavar="PATH", help="also write the rows as JSON to PATH")
    args = parser.parse_args()
    configs = args.config or ["A", "B"]
    with_torch = not args.no_torch and torch_cuda_ready()
    if not args.no_torch and not with_torch and not args.json:
        print("torch sees no CUDA device: timing femto only")
    torch_rows = {
        name: torch_cuda_bench(name, args.steps, args.warmup, args.sample_tokens)
        for name in (configs if with_torch else [])
    }
    rows = []
    for name in configs:
        for device in args.device or ["cpu", "opencl"]:
            row = bench(device, name, args.steps, args.warmup, args.sample_tokens)
            if name in torch_rows:
                row["torch_cuda"] = torch_rows[name]
            if args.profile and device.startswith("opencl"):
                row["profile"] = profile(device, name, args.steps, args.warmup)
            rows.append(row)
    if args.save:
        pathlib.Path(args.save).write_text(json.dumps(rows, indent=2) + "\n")
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print_table(rows)
    for r in rows:
        if "profile" in r:
            print_profile(r)


if __name__ == "__main__":
    main()
