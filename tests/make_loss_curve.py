"""Generate tests/data/loss_curve_200.json: a seeded 200-step training run's loss at every step.

The curve was recorded before the CPU speed work (issue 6); tests/test_loss_curve.py reruns the same
loop and requires every step's loss within 1e-3 of it, so faster kernels cannot quietly change the
math. Run `PYTHONPATH=. python tests/make_loss_curve.py` only to re-pin the curve on purpose, never to make the test pass.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from femto.backend.cpu import CPUBackend
from femto.data import get_batch
from femto.model import GPT, GPTConfig
from femto.optim import AdamW

ROOT = pathlib.Path(__file__).resolve().parents[1]
CURVE = pathlib.Path(__file__).resolve().parent / "data" / "loss_curve_200.json"
CORPUS = ROOT / "datasets" / "shakespeare" / "tinyshakespeare.txt"
STEPS = 200
# config B's shape (vocab 65, 4 heads) scaled down so 200 steps take seconds; dropout 0: deterministic
CONFIG = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
BATCH = 8
LR = 3e-3
SEED = 1337


def corpus_tokens() -> np.ndarray:
    """The first 200,000 characters of tiny Shakespeare as ids into its sorted 65-character vocab."""
    text = CORPUS.read_text(encoding="utf-8")
    vocab = {ch: i for i, ch in enumerate(sorted(set(text)))}
    return np.array([vocab[ch] for ch in text[:200_000]], dtype=np.int32)


def loss_curve(steps: int = STEPS, num_threads: int = 2) -> list[float]:
    """Train CONFIG from its seeded init for `steps` AdamW steps; the loss before each update.

    Every kernel is bit-identical at any thread count (tests/test_threads.py), so the curve is too.
    """
    backend = CPUBackend()
    previous = backend.num_threads()
    backend.set_num_threads(num_threads)
    try:
        tokens = corpus_tokens()
        rng = np.random.default_rng(SEED)
        model = GPT(CONFIG, backend, np.random.default_rng(SEED))
        optimizer = AdamW(model.params, lr=LR)
        losses = []
        for _ in range(steps):
            x, y = get_batch(tokens, BATCH, CONFIG.block_size, rng)  # (B, T) each
            _, loss = model(x, y)
            loss.backward()
            losses.append(loss.item())
            optimizer.step()
            model.zero_grad()
        return losses
    finally:
        backend.set_num_threads(previous)


def main() -> None:
    losses = loss_curve()
    record = {
        "config": CONFIG.to_dict(),
        "batch_size": BATCH,
        "lr": LR,
        "seed": SEED,
        "steps": STEPS,
        "losses": losses,
    }
    CURVE.parent.mkdir(parents=True, exist_ok=True)
    CURVE.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {CURVE}: loss {losses[0]:.4f} -> {losses[-1]:.4f} over {STEPS} steps")


if __name__ == "__main__":
    main()
