"""A run's metrics.jsonl read back: series to plot, the best validation loss, the last evaluation.

Reading only; `femto.train` writes the file (through femto.checkpoint) and `femto.plot` draws it.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from femto import checkpoint as ckpt
from femto.errors import CheckpointError

# what `femto plot --y` can draw, and the metrics.jsonl field behind each
FIELDS = {
    "loss": "loss",  # the training loss of each logged step (one batch: noisy)
    "train": "train_loss",  # the training split's loss at evaluations (eval_batches batches)
    "val": "val_loss",
    "lr": "lr",
    "tokens_per_s": "tokens_per_s",
    "grad_norm": "grad_norm",
}


@dataclass
class RunLog:
    """The records of one run's metrics.jsonl, in step order."""

    run_dir: pathlib.Path
    records: list[dict]
    tokens_per_step: int | None  # from config.json, for records written before "tokens" was logged

    @property
    def name(self) -> str:
        return str(self.run_dir)

    def x_of(self, record: dict, x: str) -> float | None:
        if x == "step":
            return record["step"]
        if isinstance(record.get("tokens"), (int, float)):
            return record["tokens"]
        return record["step"] * self.tokens_per_step if self.tokens_per_step else None

    def series(self, field: str, x: str = "step") -> tuple[list[float], list[float]]:
        """(xs, ys) of the records that have `field` (a metrics.jsonl key); x: "step" or "tokens"."""
        xs, ys = [], []
        for record in self.records:
            value = record.get(field)
            where = self.x_of(record, x)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number and where is not None:
                xs.append(where)
                ys.append(float(value))
        return xs, ys

    def best_val(self) -> tuple[float, int] | None:
        """(lowest val_loss, its step), or None before the first evaluation."""
        evals = [r for r in self.records if isinstance(r.get("val_loss"), (int, float))]
        if not evals:
            return None
        best = min(evals, key=lambda r: r["val_loss"])
        return float(best["val_loss"]), best["step"]

    def last_eval(self) -> dict | None:
        evals = [r for r in self.records if isinstance(r.get("val_loss"), (int, float))]
        return evals[-1] if evals else None


def load_run_log(run_dir: pathlib.Path) -> RunLog:
    """The metrics of the run in `run_dir`; CheckpointError when it has none."""
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(
            f"{run_dir} is not a run directory (`femto train --out {run_dir}` creates one)"
        )
    records = [r for r in ckpt.read_metrics(run_dir) if isinstance(r.get("step"), int)]
    if not records:
        raise CheckpointError(
            f"{run_dir / ckpt.METRICS_FILE} is missing or empty: no metrics to show "
            f"(`femto train --out {run_dir}` writes them)"
        )
    records.sort(key=lambda r: r["step"])
    tokens_per_step = None
    try:
        state = ckpt.load_state(run_dir)
        train = state.train
        tokens_per_step = (
            int(train["batch_size"]) * int(train.get("grad_accum", 1)) * state.model.block_size
        )
    except (CheckpointError, KeyError, TypeError, ValueError):
        pass  # metrics without a readable config: steps still plot; tokens only where logged
    return RunLog(run_dir, records, tokens_per_step)
