"""How much host memory a model would need, against how much the machine has free: stdlib only.

A model or batch that cannot fit is refused before anything is allocated, with the estimate and
the free memory in one line, instead of a MemoryError (or the OOM killer) minutes later. It is a
lower bound (float32 parameters, gradients, AdamW moments and the activations the graph keeps for
backward), so a run it lets through may still be tight, but a run it refuses can never fit.
"""

from __future__ import annotations

import os

from femto.errors import FemtoError

_F32 = 4  # bytes


def n_params(model) -> int:
    """Parameters of a GPTConfig-like `model` (vocab_size, block_size, n_layer, n_embd, bias),
    counted arithmetically: a crafted n_layer of a billion must not be iterated over."""
    V, T, C, L = model.vocab_size, model.block_size, model.n_embd, model.n_layer
    per_block = 12 * C * C + (13 * C if model.bias else 2 * C)
    return V * C + T * C + L * per_block + (2 * C if model.bias else C)


def weights_bytes(model) -> int:
    return n_params(model) * _F32


def training_bytes(model, batch_size: int) -> int:
    """Weights, gradients and two AdamW moments, plus one micro-batch's activations: per token and
    layer about 16 C floats (LayerNorms, qkv, attention output, MLP hidden before and after GELU,
    residuals) and NH * T attention probabilities; per token the logits and their gradient."""
    B, T, C = batch_size, model.block_size, model.n_embd
    per_token = model.n_layer * (16 * C + model.n_head * T) + 2 * model.vocab_size + 4 * C
    return 4 * weights_bytes(model) + B * T * per_token * _F32


def available_bytes() -> int | None:
    """Memory a new allocation can get without swapping: MemAvailable from /proc/meminfo, else the
    free physical pages; None where neither is known."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(nbytes: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes:,} bytes"


def check_fits(
    needed: int, what: str, error: type[FemtoError], available: int | None = None
) -> None:
    """Raise `error` when `needed` bytes exceed the free memory (`available`, else measured now)."""
    free = available_bytes() if available is None else available
    if free is not None and needed > free:
        raise error(
            f"{what} needs at least {_size(needed)} of memory, but only {_size(free)} is free: "
            "use a smaller model or batch (--n-layer, --n-embd, --block-size, --batch-size)"
        )
