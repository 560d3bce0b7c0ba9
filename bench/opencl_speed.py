"""Benchmark (not a test): training-step time and sampling tokens/s per device, OpenCL beside the CPU.

Usage: python bench/opencl_speed.py [--device opencl:0:0 ...] [--config D ...] [--json]. Configs A-D
are bench/train_speed.py's; a step is what femto.train runs (forward, backward, AdamW, synchronize) on random
ids; sampling is femto.sample.generate at batch 1 with the KV cache. The machine is shared: compare
rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from femto.backend import get_backend
from femto.model import GPT, GPTConfig
from femto.optim import AdamW
from femto.sample import generate
from femto.train import TrainStep

# name -> (model config, batch size), the configs of bench/train_speed.py
CONFIGS = {
    "A": ({"vocab_size": 65, "block_size": 64, "n_embd": 64, "n_layer": 4, "n_head": 4}, 32),
    "B": ({"vocab_size": 65, "block_size": 64, "n_embd": 128, "n_layer": 4, "n_head": 4}, 12),
    "C": ({"vocab_size": 1000, "block_size": 64, "n_embd": 128, "n_layer": 8, "n_head": 8}, 32),
    "D": ({"vocab_size": 500, "block_size": 128, "n_embd": 256, "n_layer": 6, "n_head": 8}, 16),
}


def train_step_times(model: GPT, batch: int, steps: int, warmup: int) -> list[float]:
    """Seconds per training step, each ended by a synchronize (so queued kernels are counted)."""
    config, backend = model.config, model.backend
    optimizer = AdamW(model.params, lr=1e-3)
    micro_step = TrainStep(model)  # forward + backward, replayed after the first step
    rng = np.random.default_rng(0)
    times = []
    for i in range(warmup + steps):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", action="append", help="cpu, opencl or opencl:P:D (repeatable)")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS), help="repeatable")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median shown)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (kernel builds)")
    parser.add_argument("--sample-tokens", type=int, default=200, help="capped at block_size - 1")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = [
        bench(device, name, args.steps, args.warmup, args.sample_tokens)
        for name in args.config or ["A", "B"]
        for device in args.device or ["cpu", "opencl"]
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    # sampling stays inside one window (no slide, no recomputed window), so its tokens/s is far
    # above bench/sample_speed.py's 200-token figure and cannot be read against it
    print(
        "| config | device | ms/step (median, min) | train tokens/s "
        "| sampling tokens/s (one window) |\n"
        "|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['config']} ({r['params']:,} params, batch {r['batch']}) | {r['device_name']} | "
            f"{r['step_ms']:.0f} ({r['step_ms_min']:.0f}) | {r['train_tokens_per_s']:,.0f} | "
            f"{r['sample_tokens_per_s']:,.0f} |"
        )
    print(
        "\nSampling: min(--sample-tokens, block_size - 1) tokens inside one cached window (63 for "
        "A-C by default), not comparable with bench/sample_speed.py's 200 tokens, most of which "
        "recompute a full window."
    )


if __name__ == "__main__":
    main()
