"""What a resumed run's changed --steps / --lr-decay-steps do to the learning-rate schedule, in
words.

Only the words: the schedule itself is train.lr_at, passed in so this module stays below train.
"""

from __future__ import annotations

from collections.abc import Callable


def schedule_notice(
    saved, new, step: int, lr_at: Callable, decay_steps: Callable
) -> str | None:
    """A sentence for a run resumed at `step` whose schedule options changed from `saved` to `new`
    (TrainConfigs), or None when the schedule ahead is the same."""
    if saved.steps == new.steps and decay_steps(saved) == decay_steps(new):
        return None
    old_end, new_end = decay_steps(saved), decay_steps(new)
    steps_part = ""
    if new.steps != saved.steps:
        steps_part = f"--steps {new.steps} (the run had {saved.steps})"
    if old_end == new_end:
        return (
            f"{steps_part}: the learning-rate schedule is unchanged (cosine decay ends at step "
            f"{new_end}; min_lr {new.min_lr:.3g} after it)"
        )
    before, after = lr_at(step, saved), lr_at(step, new)
    what = "--lr-decay-steps" if new.lr_decay_steps != saved.lr_decay_steps else steps_part
    advice = ""
    if new.lr_decay_steps is None and saved.lr_decay_steps is None:
        advice = f"; pass --lr-decay-steps {old_end} to keep the old schedule"
    head = f"{what}: " if what else ""
    return (
        f"{head}the cosine decay now ends at step {new_end} instead of {old_end}, so the learning "
        f"rate at step {step} goes from {before:.3g} to {after:.3g}{advice}"
    )
