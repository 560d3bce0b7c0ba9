"""Token ids served as (x, y) windows: the train / val split, random training batches and the
evaluation's consecutive windows."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from femto.errors import ConfigError, DatasetError


def check_windows(tokens: np.ndarray, block_size: int, what: str = "the corpus") -> None:
    """Raise DatasetError unless `tokens` holds at least one window of block_size + 1 tokens."""
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}")
    if len(tokens) < block_size + 1:
        raise DatasetError(
            f"{what} has {len(tokens):,} tokens, fewer than one training window "
            f"(block_size {block_size} + 1 = {block_size + 1}): use a smaller --block-size "
            "or a larger corpus"
        )


def train_val_split(tokens: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """First (1 - val_fraction) of the tokens for training, the rest for validation, by position
    (nanoGPT's split: shakespeare gives 1,003,854 / 111,540)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    split = int(len(tokens) * (1.0 - val_fraction))
    return tokens[:split], tokens[split:]


def get_batch(
    tokens: np.ndarray,
    batch_size: int,
    block_size: int,
    rng: np.random.Generator,
    what: str = "the training split",
) -> tuple[np.ndarray, np.ndarray]:
    """B random windows of T + 1 tokens: x (B, T) int32 and y (B, T) int32, y = x shifted by one."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            "get_batch needs a seeded np.random.Generator (np.random.default_rng(seed))"
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    check_windows(tokens, block_size, what)
    starts = rng.integers(0, len(tokens) - block_size, size=batch_size)  # (B,)
    windows = np.asarray(tokens[starts[:, None] + np.arange(block_size + 1)], dtype=np.int32)
    x = np.ascontiguousarray(windows[:, :-1])  # (B, T)
    y = np.ascontiguousarray(windows[:, 1:])  # (B, T)
    return x, y


def micro_batch_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of micro-batch `index` of a run's one global stream: its windows (get_batch),
    then its dropout seeds, are drawn from it. Keyed by the index alone, so any process can draw any
    micro-batch: a data-parallel rank takes its share of each step, and a resumed run, on any number
    of processes, continues at the index it saved."""
    return np.random.default_rng([seed, 1, index])


def eval_windows(
    tokens: np.ndarray, block_size: int, batch_size: int, what: str = "the validation split"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every full window once, starts 0, T, 2T, ... with start + T + 1 <= N, in batches of up to B:
    x (b, T) int32, y (b, T) int32 with b <= B (the last batch may be smaller)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    check_windows(tokens, block_size, what)
    n_windows = (len(tokens) - 1) // block_size
    offsets = np.arange(block_size + 1)
    for first in range(0, n_windows, batch_size):
        starts = np.arange(first, min(first + batch_size, n_windows)) * block_size  # (b,)
        windows = np.asarray(tokens[starts[:, None] + offsets], dtype=np.int32)
        yield np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])
