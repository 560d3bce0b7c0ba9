"""Cross-entropy of a trained model on a token stream, over every full window (`femto eval`).

The stream is cut at starts 0, T, 2T, ... with start + T + 1 <= N, and the loss is averaged over every
position of every window (nats per token). Forward only; the batching comes from femto.data.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from femto.data import eval_windows
from femto.graph import no_grad
from femto.model import GPT


def evaluate(
    model: GPT,
    tokens: np.ndarray,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    what: str = "the corpus",
) -> tuple[float, int]:
    """(mean cross-entropy in nats/token, number of positions scored) of `model` on `tokens` (N,)."""
    T = model.config.block_size
    n_windows = (len(tokens) - 1) // T
    total, positions, windows = 0.0, 0, 0
    with no_grad():
        for x, y in eval_windows(tokens, T, batch_size, what):  # (b, T) each
            _, loss = model(x, y)
            # the kernel averages over its b*T positions: weight by them so every position counts once
            total += loss.item() * y.size
            positions += y.size
            windows += x.shape[0]
            if progress is not None:
                progress(windows, n_windows)
    return total / positions, positions


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf
