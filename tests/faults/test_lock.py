"""One writer, consistent readers: a second trainer on a run directory gets one line naming the
holder's pid; the lock goes with its process however it ends; readers looping while a trainer saves
every step never fail and never see a torn checkpoint."""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers_a import (
    FOREVER,
    TINY,
    assert_run_whole,
    copy_run,
    femto_child,
    invoke,
    make_workdir,
    train_run,
    wait_for_line,
)

from femto import checkpoint as ckpt
from femto.errors import ConfigError
from femto.runlock import TRAIN_LOCK, TrainerLock, checkpoint_lock
from femto.sample import load_run, load_tokenizer_of


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock")
    corpus, env = make_workdir(root)
    return corpus, env, train_run(root / "good", corpus, env, steps=2)


def test_second_trainer_gets_one_line_with_the_holders_pid(work, tmp_path):
    corpus, env, good = work
    run = copy_run(good, tmp_path / "run")
    args = ["train", "--data", corpus, "--out", run, *TINY]
    holder = femto_child([*args, *FOREVER], env)
    try:
        wait_for_line(holder, "step 4/")
        metrics_before = (run / ckpt.METRICS_FILE).read_bytes()
        result = invoke([*args, "--steps", "9"], env)
        assert result.exit_code == 1
        assert result.output.strip() == (
            f"Error: {run} is in use by another `femto train` (pid {holder.pid}): wait for it to "
            "end, stop it, or pick another --out"
        )
        # the refused trainer wrote nothing: the holder's metrics only grow, in step order
        steps = [int(line.split(b'"step":')[1].split(b",")[0])
                 for line in (run / ckpt.METRICS_FILE).read_bytes().splitlines()]  # fmt: skip
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= metrics_before.count(b"\n")
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.communicate(timeout=60)
    assert holder.returncode == 0
    assert not (run / TRAIN_LOCK).exists()  # a clean end removes the lock file
    assert_run_whole(run)


def test_the_lock_dies_with_a_killed_trainer(work, tmp_path):
    corpus, env, good = work
    run = copy_run(good, tmp_path / "run")
    holder = femto_child(["train", "--data", corpus, "--out", run, *TINY, *FOREVER], env)
    wait_for_line(holder, "step 3/")
    holder.kill()
    holder.wait()
    assert (run / TRAIN_LOCK).exists()  # a stale file, but no lock: the next trainer goes ahead
    result = invoke(["train", "--data", corpus, "--out", run, *TINY, "--steps", "30"], env)
    assert result.exit_code == 0, result.output
    assert ckpt.load_state(run).step == 30


def test_lock_in_process(tmp_path):
    run = tmp_path / "new" / "run"
    lock = TrainerLock(run)
    assert (run / TRAIN_LOCK).read_text().strip() == str(os.getpid())
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        TrainerLock(run)
    lock.release(remove_dir_if_empty=True)
    assert not run.exists()  # made by the lock, left empty: removed
    again = TrainerLock(run)
    (run / "keep.txt").write_text("x")
    again.release(remove_dir_if_empty=True)
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a run directory"):
        TrainerLock(tmp_path / "file")


def test_readers_looping_while_a_trainer_saves_never_fail(work, tmp_path):
    corpus, env, good = work
    run = copy_run(good, tmp_path / "run")
    args = ["train", "--data", corpus, "--out", run, *TINY, *FOREVER, "--save-every", "1"]
    trainer = femto_child(args, env)
    failures, seen = [], set()
    try:
        wait_for_line(trainer, "step 3/")
        reads, deadline = 0, time.monotonic() + 30
        while (reads < 60 or len(seen) < 3) and time.monotonic() < deadline:
            reads += 1
            try:
                loaded = load_run(run)  # config, tokenizer and weights of one checkpoint
                tokenizer, _ = load_tokenizer_of(run)
                with checkpoint_lock(run, exclusive=False):  # what a reader of all three holds
                    ckpt.load_optimizer_state(run, ckpt.load_state(run))
                seen.add(loaded.state.step)
                assert tokenizer.vocab_size == loaded.model.config.vocab_size
            except Exception as exc:  # noqa: BLE001 (every failure counts, whatever its kind)
                failures.append(repr(exc))
    finally:
        trainer.send_signal(signal.SIGTERM)
        trainer.communicate(timeout=60)
    assert failures == []
    assert len(seen) >= 3, f"the trainer saved too rarely to test anything: steps {sorted(seen)}"
    assert trainer.returncode == 0
