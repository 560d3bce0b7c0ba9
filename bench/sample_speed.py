"""Times generation of 200 tokens at batch 1: femto's sampler beside PyTorch eager, with and without a
key/value cache, for the configs of bench/train_speed.py (A-D of issue 6).

Each framework runs in its own subprocess on the same thread count, with random weights (speed does
not depend on them) and temperature-1 sampling. Both slide the window the same way once the context
exceeds block_size (the cache is rebuilt from the last block_size tokens), and both do the same work
per token: with the cache, the last position's logits only (femto's forward_cached(last_only=True),
the twin's last-only forward under torch.inference_mode()); without it, every position's (femto's
graph forward). It does not compare text. Memory columns as in train_speed.py.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

from train_speed import (
    MEMORY_NOTE,
    add_common_args,
    config_dict,
    import_framework,
    memory_cells,
    memory_head,
    memory_ratios,
    memory_record,
    parse_common_args,
    rss_mib,
    spawn,
    torch_wanted,
    write_json,
)

MODES = ("cache", "no_cache")


def femto_generator(cfg: dict[str, int], threads: int):
    import numpy as np

    from femto.backend.cpu import CPUBackend
    from femto.model import GPT, GPTConfig
    from femto.sample import generate

    backend = CPUBackend(num_threads=threads)
    model_cfg = GPTConfig(**{k: v for k, v in cfg.items() if k != "batch_size"}, dropout=0.0)
    model = GPT(model_cfg, backend, np.random.default_rng(0))

    def run(tokens: int, use_cache: bool) -> None:
        rng = np.random.default_rng(0)
        generate(model, [0], tokens, temperature=1.0, rng=rng, use_cache=use_cache)

    return run


def torch_generator(cfg: dict[str, int], threads: int):
    import torch
    from torch_gpt import TorchGPT

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = TorchGPT(
        cfg["vocab_size"], cfg["block_size"], cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    ).eval()

    def run(tokens: int, use_cache: bool) -> None:
        model.generate(torch.zeros((1, 1), dtype=torch.long), tokens, use_cache=use_cache)

    return run


def run_worker(framework: str, config: str, threads: int, tokens: int, repeats: int) -> dict:
    rss_import = import_framework(framework)
    cfg = config_dict(config)
    make = femto_generator if framework == "femto" else torch_generator
    run = make(cfg, threads)
    rss_build = rss_mib()
    result = {"framework": framework, "config": config, "threads": threads, "tokens": tokens}
    for mode in MODES:
        use_cache = mode == "cache"
        run(min(tokens, 8), use_cache)  # warm-up: first-call costs (allocation, dispatch caches)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(tokens, use_cache)
            times.append(time.perf_counter() - t0)
        result[f"{mode}_tokens_per_s"] = tokens / statistics.median(times)
    result.update(memory_record(rss_import, rss_build))
    return result


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'cfg':<4}{'framework':<10}{'cache tok/s':>13}{'no-cache tok/s':>16}"
        f"{'cache vs torch cache':>22}{memory_head()}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        for r in (row["femto"], row.get("torch")):
            if r is None:
                continue
            ratio = (
                f"{row['speed_ratio']:.2f}x" if r["framework"] == "femto" and "torch" in row else ""
            )
            lines.append(
                f"{row['config']:<4}{r['framework']:<10}{r['cache_tokens_per_s']:>13.0f}"
                f"{r['no_cache_tokens_per_s']:>16.0f}{ratio:>22}{memory_cells(r, row)}"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--tokens", type=int, default=200, help="tokens generated per run (200)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median counts (3)")
    args = parse_common_args(parser, argv)
    if args.threads < 1 or args.tokens < 1 or args.repeats < 1:
        parser.error("--threads, --tokens and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(args.worker, args.configs[0], args.threads, args.tokens, args.repeats)
        print(json.dumps(result))
        return
    with_torch = torch_wanted(args)
    script = pathlib.Path(__file__).resolve()
    worker_args = ["--tokens", str(args.tokens), "--repeats", str(args.repeats)]

    def run(framework: str, config: str) -> dict:
        return spawn(script, framework, config, args.threads, worker_args)

    rows = []
    for config in args.configs:
        row: dict = {"config": config, **config_dict(config), "femto": run("femto", config)}
        if with_torch:
            row["torch"] = run("torch", config)
            row["speed_ratio"] = (
                row["femto"]["cache_tokens_per_s"] / row["torch"]["cache_tokens_per_s"]
            )
            row.update(memory_ratios(row["femto"], row["torch"]))
        rows.append(row)
        print(f"config {config} done", file=sys.stderr)
    print(
        f"generation at batch 1, {args.tokens} tokens, {args.threads} threads, median of "
        f"{args.repeats} runs; ratio = femto cache tok/s / PyTorch cache tok/s\n{MEMORY_NOTE}"
    )
    print(format_table(rows))
    if args.json:
        write_json(args.json, "sample_speed", args, rows)


if __name__ == "__main__":
    main()
