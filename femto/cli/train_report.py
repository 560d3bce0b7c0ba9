"""What `femto train` prints while it trains (a status line per event, samples at checkpoints)
and the summary it ends with."""

from __future__ import annotations

import os
import pathlib

import click

from femto.cli.progress import duration


def peak_flops_of(device: str, cache_root: pathlib.Path) -> tuple[float | None, str]:
    """The device's peak FLOP/s for MFU, and where it came from: FEMTO_PEAK_FLOPS (a number, e.g. a
    datasheet's) or femto's matmul probe, measured once per device and cached in the cache dir."""
    from femto.errors import ConfigError
    from femto.throughput import PEAK_FILE, peak_flops

    given = os.environ.get("FEMTO_PEAK_FLOPS")
    if given:
        try:
            value = float(given)
        except ValueError:
            value = -1.0
        if not value > 0 or value == float("inf"):
            raise ConfigError(
                f"FEMTO_PEAK_FLOPS must be a positive number of FLOP/s, got {given!r}"
            )
        return value, "FEMTO_PEAK_FLOPS"
    flops, key, measured = peak_flops(device, cache_root)
    how = "measured now" if measured else "measured earlier"
    return flops, f"{key}, femto's matmul peak, {how}, cached in {cache_root / PEAK_FILE}"


def train_summary(run_dir: pathlib.Path, final, done: dict, flops_token: float, peak) -> list[str]:
    """The lines `femto train` ends with: where the time went, speed, losses, files."""
    from femto.runlog import load_run_log

    timing = done["timing"]
    lines = [
        f"done: step {final.step} of {final.train['steps']} in {duration(timing.wall_s)} "
        f"({duration(timing.train_s)} training, {duration(timing.eval_s)} evaluating, "
        f"{duration(timing.checkpoint_s)} saving and sampling)"
        + (" (stopped early: resume with the same command)" if done["stopped"] else "")
    ]
    # the rate the eval lines show: steady steps, without a session's first (graph capture)
    tokens_per_s = done.get("session_tokens_per_s", 0.0)
    if tokens_per_s > 0:
        mfu = f", MFU {100 * flops_token * tokens_per_s / peak:.1f}%" if peak else ""
        overall = ""
        if timing.steps >= final.step and timing.train_s > 0:  # every session was timed
            rate = final.tokens_seen / timing.train_s
            if abs(rate - tokens_per_s) > 0.1 * tokens_per_s:
                overall = f" ({rate:,.0f} counting the first step, which records the graph)"
        lines.append(
            f"  throughput  {tokens_per_s:,.0f} tokens/s{mfu}{overall}, "
            f"{final.tokens_seen:,} tokens in all"
        )
    log = load_run_log(run_dir)
    last = log.last_eval()
    if last is not None:
        train = f"train {last['train_loss']:.4f}, " if "train_loss" in last else ""
        at = "" if last["step"] == final.step else f" (at step {last['step']}, the last evaluation)"
        lines.append(f"  final loss  {train}val {last['val_loss']:.4f}{at}")
        best, best_step = log.best_val()
        lines.append(f"  best val    {best:.4f} at step {best_step}")
    files = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    lines.append(f"  files       {run_dir}: {', '.join(files)}")
    lines.append(f"  look at it  femto plot {run_dir} / femto sample --out {run_dir}")
    return lines


class TrainReport:
    """The training loop's event callback: each event becomes status lines, and each checkpoint
    shows a sample from the model as it is then (the same draws every time, so samples compare).
    `done` collects what the closing summary needs."""

    def __init__(self, run, run_dir: pathlib.Path, status, flops_token: float, peak, peak_source: str,
                 root: bool) -> None:  # fmt: skip
        from femto.errors import TokenizerError
        from femto.sample import encode_prompt

        self.run, self.run_dir, self.status = run, run_dir, status
        self.flops_token, self.peak, self.peak_source = flops_token, peak, peak_source
        self.tty = status.tty
        self.done: dict = {}
        try:
            self.prompt, _ = encode_prompt(run.tokenizer, "", run.state.model.block_size)
        except TokenizerError as exc:
            self.prompt = None  # a vocabulary without a newline: checkpoints then come without samples
            if root:
                click.echo(f"notice: no samples at checkpoints ({exc})", err=True)

    def __call__(self, event: dict) -> None:
        handler = getattr(self, f"on_{event['kind']}", None)
        if handler is not None:
            handler(event)

    def on_start(self, event: dict) -> None:
        run, cfg = self.run, self.run.config
        what = f"resuming at step {event['step']}" if event["resumed"] else "new run"
        if event["resumed"] and event["elapsed_s"] > 0:
            what += f" ({duration(event['elapsed_s'])} spent so far)"
        self.status.line(
            f"{what} in {self.run_dir}: {event['params'] / 1e6:.2f}M parameters, "
            f"vocab {run.state.model.vocab_size} ({run.tokenizer.name}), "
            f"{len(run.train_tokens):,} train / {len(run.val_tokens):,} val tokens, "
            f"on {event['device']}"
        )
        self.status.line(
            f"MFU: {self.flops_token / 1e6:,.2f} MFLOP per token (6N + 12LCT) against "
            f"{self.peak / 1e9:,.1f} GFLOP/s ({self.peak_source})"
        )
        if event["ranks"] > 1:
            self.status.line(
                f"{event['ranks']} ranks: global batch {event['global_batch']} sequences = "
                f"{cfg.batch_size} x --grad-accum {cfg.grad_accum} x {event['ranks']} ranks; "
                + ", ".join(f"rank {r} pid {p}" for r, p in enumerate(event["processes"]))
            )

    def on_step(self, event: dict) -> None:
        val = f"{event['val_loss']:.4f}" if event["val_loss"] is not None else "-"
        line = (
            f"step {event['step']}/{event['steps']} | loss {event['loss']:.4f} | val {val} | "
            f"{event['avg_tokens_per_s']:,.0f} tok/s | {duration(event['elapsed_s'])} "
            f"elapsed | ETA {duration(event['eta_s'])}"
        )
        self.done["session_tokens_per_s"] = event["avg_tokens_per_s"]
        if self.tty:
            self.status.live(line)
        elif event["step"] % self.run.config.log_every == 0 or event["step"] == event["steps"]:
            self.status.line(line)

    def on_eval(self, event: dict) -> None:
        mfu = 100 * self.flops_token * event["avg_tokens_per_s"] / self.peak
        self.status.line(
            f"eval step {event['step']}: train {event['train_loss']:.4f} | "
            f"val {event['val_loss']:.4f} | {event['avg_tokens_per_s']:,.0f} tok/s | "
            f"MFU {mfu:.1f}% | eval {event['eval_s']:.1f} s"
        )

    def on_skip(self, event: dict) -> None:  # the divergence guard (femto/divergence.py)
        self.status.line(f"step {event['step']} skipped: its {event['reason']}")

    def on_best(self, event: dict) -> None:
        self.status.line(
            f"best val loss {event['val_loss']:.4f} at step {event['step']}: "
            f"saved to {event['dir']}"
        )

    def on_checkpoint(self, event: dict) -> None:
        cfg = self.run.config
        if self.prompt is None or cfg.sample_tokens == 0:
            self.status.line(f"saved {self.run_dir} at step {event['step']}")
            return
        import numpy as np

        from femto.sample import generate, show_text

        rng = np.random.default_rng(cfg.seed)  # the same draws each time: samples compare
        new = generate(event["model"], self.prompt, cfg.sample_tokens, 0.8, 200, rng)
        self.status.line(
            f"saved {self.run_dir} at step {event['step']}; sample:\n"
            f"{show_text(self.run.tokenizer, new)}\n{'-' * 40}"
        )

    def on_done(self, event: dict) -> None:
        self.done.update(event)
