"""The divergence guard: a step whose loss or gradient is unusable is skipped, and a checkpoint is
never written from a state that has diverged.

Two rules. Per step (the loss is read every step anyway): a non-finite loss, a non-finite gradient
norm, or a loss far above its running mean (over 3x it, plus 1 nat) skips the update; several in a
row stop training. Before a save: the parameters and both AdamW moments must be finite (one
device-side flag, no download), and the loss of the state about to be saved, on a fixed training
batch, must not be far above the running mean: an update can ruin every parameter while leaving
them finite (lr 1e38 gives weights near 1e38).
"""

from __future__ import annotations

import math

import numpy as np

from femto.data import get_batch
from femto.errors import TrainingDiverged
from femto.graph import Tensor, no_grad
from femto.model import GPT
from femto.ops import nonfinite
from femto.optim import AdamW

# a loss above SPIKE_FACTOR times the running mean plus SPIKE_MARGIN nats is "far above": a healthy
# run's batch losses stay within tens of percent of the mean, a diverging one's reach 1e18 or NaN
# within a few steps. The margin keeps a memorized corpus (mean 0.05, batches at 0.2) from tripping.
SPIKE_FACTOR = 3.0
SPIKE_MARGIN = 1.0
# weight of the newest loss in the running mean (an exponential moving average)
MEAN_WEIGHT = 0.1
# consecutive skipped steps after which training stops: one bad batch is noise, five are a trend
MAX_SKIPS = 5


class DivergenceGuard:
    """The running mean of accepted losses, the skip decisions, the check before each save."""

    def __init__(
        self, model: GPT, optimizer: AdamW, tokens: np.ndarray, batch_size: int, seed: int
    ):
        self.model, self.optimizer = model, optimizer
        # (x, y), each (B, T): a fixed training batch, from a generator of its own (the run's batch
        # generator, saved with each checkpoint, must not move)
        rng = np.random.default_rng([seed, 3])
        self.probe = get_batch(tokens, batch_size, model.config.block_size, rng)
        self.mean: float | None = None
        self.skips_in_a_row = 0

    def _far_above(self, loss: float) -> bool:
        return self.mean is not None and loss > self.limit()

    def limit(self) -> float:
        """The loss above which a step is a spike (only once a running mean exists)."""
        return SPIKE_FACTOR * self.mean + SPIKE_MARGIN

    def loss_problem(self, loss: float) -> str | None:
        """Why a step with this loss must not update (None: it may)."""
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if self._far_above(loss):
            return f"loss {loss:.4g} is far above its running mean {self.mean:.4g}"
        return None

    def accepted(self, loss: float) -> None:
        self.skips_in_a_row = 0
        self.mean = (
            loss if self.mean is None else (1 - MEAN_WEIGHT) * self.mean + MEAN_WEIGHT * loss
        )

    def skipped(self, step: int, reason: str) -> None:
        """Count a skipped step; raise TrainingDiverged once MAX_SKIPS have come in a row."""
        self.skips_in_a_row += 1
        if self.skips_in_a_row >= MAX_SKIPS:
            raise TrainingDiverged(
                f"training diverged at step {step}: {MAX_SKIPS} steps in a row skipped, the last "
                f"because its {reason}"
            )

    def state_problem(self) -> str | None:
        """Why the current parameters and moments must not be saved (None: they may)."""
        state = self.optimizer.state_tensors()
        tensors: list[Tensor] = [t for kind in state.values() for t in kind]
        if tensors and nonfinite(*tensors).item() != 0.0:
            bad = [kind for kind, ts in state.items() if nonfinite(*ts).item() != 0.0]
            return f"{' and '.join(bad)} hold NaN or infinity"
        with no_grad():
            _, loss = self.model(*self.probe)
            value = loss.item()
        if not math.isfinite(value):
            return f"the loss of the state to save is {value}"
        if self._far_above(value):
            return (
                f"the loss of the state to save is {value:.4g}, far above the running mean "
                f"{self.mean:.4g}"
            )
        return None
