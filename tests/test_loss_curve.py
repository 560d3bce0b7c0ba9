"""A seeded 200-step training run must reproduce the loss curve pinned before the CPU speed work.

Kernels may reorder float sums (faster matmul blocking, fused ops), which moves the curve a little;
1e-3 per step allows that and nothing more. The curve comes from tests/make_loss_curve.py.
"""

from __future__ import annotations

import json

import numpy as np
from make_loss_curve import CURVE, STEPS, loss_curve

TOLERANCE = 1e-3
# One thread: the curve is the same at any count (every kernel is thread-count independent, see
# tests/test_threads.py), and on a loaded 2-core CI machine two OpenMP threads can wait on each
# other's time slices at every parallel region, turning 2 seconds into a minute.
THREADS = 1


def test_loss_curve_matches_the_pinned_run():
    pinned = np.array(json.loads(CURVE.read_text())["losses"])
    assert pinned.shape == (STEPS,)
    losses = np.array(loss_curve(num_threads=THREADS))
    gap = np.abs(losses - pinned)
    worst = int(np.argmax(gap))
    assert gap[worst] <= TOLERANCE, (
        f"step {worst}: loss {losses[worst]:.6f} vs pinned {pinned[worst]:.6f} "
        f"(|diff| {gap[worst]:.2e} > {TOLERANCE})"
    )
    assert losses[-1] < pinned[0] - 1.0, "the run no longer learns"
