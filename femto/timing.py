"""Where a run's time goes (training steps, evaluations, checkpoints with samples) and its ETA.

The totals are saved with each checkpoint (config.json's "timing"), so a resumed run's elapsed
time and ETA continue from the earlier sessions' measurements instead of starting from nothing.
Stdlib only; the caller supplies the durations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# a resumed session trusts only its own step times once it has this many (the batch size or the
# device may have changed); before that it leans on the earlier sessions' average
OWN_STEPS = 20


def occurrences(after: int, upto: int, every: int, last: int) -> int:
    """How many steps s in (after, upto] satisfy s % every == 0 or s == last (upto <= last)."""
    if upto <= after:
        return 0
    count = upto // every - after // every
    if after < last <= upto and last % every != 0:
        count += 1
    return count


@dataclass
class Totals:
    """Seconds spent, and how many of each, over every session of the run."""

    train_s: float = 0.0
    steps: int = 0
    eval_s: float = 0.0
    evals: int = 0
    checkpoint_s: float = 0.0
    checkpoints: int = 0
    wall_s: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> Totals:
        """From config.json's "timing"; anything but non-negative numbers (a hand-edited or damaged
        file) means no usable history, and the ETA starts afresh."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for v in known.values()
        ):
            return cls()
        return cls(**known)


class RunTimer:
    """Durations of this session on top of the earlier sessions' totals."""

    def __init__(self, previous: dict | None = None) -> None:
        self.before = Totals.from_dict(previous or {})
        self.now = Totals()
        self.first_step_s = 0.0

    def add_step(self, seconds: float) -> None:
        if self.now.steps == 0:
            self.first_step_s = seconds
        self.now.train_s += seconds
        self.now.steps += 1

    def add_eval(self, seconds: float) -> None:
        self.now.eval_s += seconds
        self.now.evals += 1

    def add_checkpoint(self, seconds: float) -> None:
        self.now.checkpoint_s += seconds
        self.now.checkpoints += 1

    def total(self, wall_s: float) -> Totals:
        """Every session's totals, with this session's wall time so far."""
        b, n = self.before, self.now
        return Totals(
            b.train_s + n.train_s, b.steps + n.steps, b.eval_s + n.eval_s, b.evals + n.evals,
            b.checkpoint_s + n.checkpoint_s, b.checkpoints + n.checkpoints, b.wall_s + wall_s,
        )  # fmt: skip

    def to_dict(self, wall_s: float) -> dict:
        return asdict(self.total(wall_s))

    def step_s(self) -> float:
        """Seconds per training step for the ETA. A session's first step records the graph for
        replay (several times slower), so it is left out once there are others; the session's own
        average is used once it has OWN_STEPS steps, before that blended with earlier sessions'."""
        n, b = self.now, self.before
        own_steps = n.steps - 1 if n.steps > 1 else 0
        own_s = n.train_s - self.first_step_s if n.steps > 1 else 0.0
        if own_steps >= OWN_STEPS or (own_steps and b.steps == 0):
            return own_s / own_steps
        if b.steps:
            return (own_s + b.train_s) / (own_steps + b.steps)
        return n.train_s / n.steps if n.steps else 0.0

    def eval_s(self, eval_batches: int, grad_accum: int) -> float:
        """Seconds per evaluation, measured; before the first one, a guess from the step time: two
        splits of eval_batches forward passes, each about a third of a micro-step."""
        evals = self.now.evals + self.before.evals
        if evals:
            return (self.now.eval_s + self.before.eval_s) / evals
        return 2 * eval_batches * self.step_s() / grad_accum / 3

    def checkpoint_s(self) -> float:
        """Seconds per checkpoint with its sample, measured (0 before the first)."""
        count = self.now.checkpoints + self.before.checkpoints
        return (self.now.checkpoint_s + self.before.checkpoint_s) / count if count else 0.0

    def eta(self, step: int, steps: int, eval_every: int, save_every: int, eval_batches: int,
            grad_accum: int) -> float:  # fmt: skip
        """Seconds until step `steps`: the steps left and the evaluations and checkpoints in them."""
        evals = occurrences(step, steps, eval_every, steps)
        saves = occurrences(step, steps, save_every, steps)
        return (
            (steps - step) * self.step_s()
            + evals * self.eval_s(eval_batches, grad_accum)
            + saves * self.checkpoint_s()
        )
