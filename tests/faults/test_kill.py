"""kill -9 while training and saving: at random instants, and just before each of the 19 renames,
fsyncs and unlinks of a checkpoint save. Every time the run loads (config, tokenizer, weights and
moments of one checkpoint), metrics lines are whole, and resuming reproduces, bit for bit, the run
that was never killed."""

from __future__ import annotations

import signal
import time

import numpy as np
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

RANDOM_KILLS = 6
# every run here trains to this many steps: the learning-rate schedule depends on it, so a resumed
# run matches the reference bit for bit only with the same --steps
STEPS = 16
SAVE_EVENTS = 19  # os.unlink, os.fsync and os.replace calls of one save (femto/checkpoint.py)
# kills the child just before the K-th file operation of its second save (of step 4, the run
# resuming at step 2 and saving every step): the renames, fsyncs and unlinks of a commit
KILL_IN_SAVE = """
import os, signal
import femto.checkpoint as _ckpt
_K, _saves, _events = {k}, [0], [0]
_save = _ckpt.save_checkpoint
def _counting_save(*args, **kwargs):
    _saves[0] += 1
    return _save(*args, **kwargs)
_ckpt.save_checkpoint = _counting_save
def _watch(name):
    real = getattr(os, name)
    def call(*args, **kwargs):
        if _saves[0] == 2:
            _events[0] += 1
            if _events[0] == _K:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    setattr(os, name, call)
for _name in ("unlink", "fsync", "replace", "rename"):
    _watch(_name)
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    corpus, env = make_workdir(root)
    good = train_run(root / "good", corpus, env, steps=2)
    reference = copy_run(good, root / "reference")
    assert (
        invoke(
            ["train", "--data", corpus, "--out", reference, *TINY, "--steps", STEPS], env
        ).exit_code
        == 0
    )
    return corpus, env, good, reference


def child_args(corpus, run):
    return ["train", "--data", corpus, "--out", run, *TINY, "--steps", STEPS, "--save-every", "1"]


def resume_matches_reference(run, corpus, env, reference):
    """Resume to STEPS (saving only at the end: saves do not touch the batch generator)."""
    result = invoke(["train", "--data", corpus, "--out", run, *TINY, "--steps", STEPS], env)
    assert result.exit_code == 0, result.output
    for name in (ckpt.MODEL_FILE, ckpt.OPTIMIZER_FILE):
        got, _ = ckpt.load_safetensors(run / name)
        want, _ = ckpt.load_safetensors(reference / name)
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in got), f"{name} differs after resume"


def test_kill_at_each_file_operation_of_a_save(work, tmp_path):
    corpus, env, good, reference = work
    children = {}
    for k in range(1, SAVE_EVENTS + 1):
        run = copy_run(good, tmp_path / f"run{k}")
        children[k] = (run, femto_child(child_args(corpus, run), env, KILL_IN_SAVE.format(k=k)))
    steps = {}
    for k, (run, child) in children.items():
        child.communicate(timeout=120)
        assert child.returncode == -signal.SIGKILL, f"kill point {k} was never reached"
        steps[k] = assert_run_whole(run, clean=False).step
        resume_matches_reference(run, corpus, env, reference)
    # killed before the journal is whole: the old checkpoint; after: the new one (rolled forward)
    assert {steps[k] for k in steps} == {3, 4}, steps


def test_kill_at_random_instants_of_training_and_saving(work, tmp_path):
    corpus, env, good, _ = work
    rng = np.random.default_rng(11)
    for i in range(RANDOM_KILLS):  # one child at a time: six trainers at once would crawl
        run = copy_run(good, tmp_path / f"run{i}")
        args = ["train", "--data", corpus, "--out", run, *TINY, *FOREVER, "--save-every", "1"]
        child = femto_child(args, env)
        wait_for_line(child, "step 3/")
        time.sleep(float(rng.uniform(0.0, 0.2)))
        child.kill()
        child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL
        step = assert_run_whole(run, clean=False).step
        assert step >= 2
        # (bit-exact resumption is checked above: it needs the schedule of the same --steps)
        args = ["train", "--data", corpus, "--out", run, *TINY, "--steps", step + 1]
        result = invoke(args, env)
        assert result.exit_code == 0 and f"done: step {step + 1}" in result.output, result.output
