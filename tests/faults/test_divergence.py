"""The divergence guard: a diverging run never overwrites its last good checkpoint, bad steps are
skipped, the optimizer skips non-finite gradients, and the state check names what is not finite."""

from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import pytest
from helpers_a import (
    TINY,
    assert_run_whole,
    checkpoint_bytes,
    copy_run,
    invoke,
    make_workdir,
    run_loss,
    train_run,
)

import femto.train
from femto import checkpoint as ckpt
from femto.divergence import MAX_SKIPS, SPIKE_FACTOR, SPIKE_MARGIN, DivergenceGuard
from femto.errors import TrainingDiverged
from femto.model import GPT, GPTConfig
from femto.optim import AdamW


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("divergence")
    corpus, env = make_workdir(root)
    good = train_run(root / "good", corpus, env, steps=6)
    return root, corpus, env, good, None


def eval_tokens(run):
    loaded_vocab = ckpt.load_state(run).model.vocab_size
    return np.arange(400, dtype=np.int64) * 7 % loaded_vocab  # fixed ids inside the vocabulary


@pytest.mark.parametrize("lr", ["1e38", "1e4"])
def test_resuming_with_a_huge_lr_keeps_the_good_checkpoint(work, tmp_path, lr):
    _, corpus, env, good, _ = work
    run = copy_run(good, tmp_path / "run")
    before, loss_before = checkpoint_bytes(run), run_loss(run, eval_tokens(run))
    args = ["train", "--data", corpus, "--out", run, *TINY, "--steps", "40"]
    result = invoke([*args, "--lr", lr, "--min-lr", "0", "--warmup", "0", "--save-every", "1"], env)
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: training diverged at step ") and "not saved" in last, last
    assert checkpoint_bytes(run) == before
    assert run_loss(run, eval_tokens(run)) == loss_before
    assert_run_whole(run)


def test_a_new_run_at_a_huge_lr_never_saves_a_diverged_state(work, tmp_path):
    _, corpus, env, _, _ = work
    run = tmp_path / "run"
    args = ["train", "--data", corpus, "--out", run, *TINY, "--steps", "40", "--save-every", "1"]
    result = invoke([*args, "--lr", "1e4", "--min-lr", "0", "--warmup", "0"], env)
    assert result.exit_code == 1 and "training diverged at step" in result.output, result.output
    if ckpt.has_checkpoint(run):  # whatever was saved is finite and sane
        loss = run_loss(run, eval_tokens(run))
        assert math.isfinite(loss) and loss < 3 * math.log(ckpt.load_state(run).model.vocab_size)


def test_a_bad_step_is_skipped_and_training_goes_on(work, tmp_path, monkeypatch):
    _, corpus, env, _, _ = work
    real_call = femto.train.TrainStep.__call__
    calls = []

    def one_nan(self, x, y, rng, *reducer):
        loss = real_call(self, x, y, rng, *reducer)
        calls.append(loss)
        return float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(femto.train.TrainStep, "__call__", one_nan)
    run = tmp_path / "run"
    result = invoke(["train", "--data", corpus, "--out", run, *TINY, "--steps", "6"], env)
    assert result.exit_code == 0, result.output
    assert "step 3 skipped: its loss is nan" in result.output
    records = [json.loads(line) for line in (run / ckpt.METRICS_FILE).read_text().splitlines()]
    skipped = [r for r in records if r.get("skipped")]
    assert [r["step"] for r in skipped] == [3] and skipped[0]["loss"] is None
    assert "grad_norm" not in skipped[0] and all(
        "grad_norm" in r for r in records if r not in skipped
    )
    assert ckpt.load_state(run).step == 6
    assert_run_whole(run)


def test_a_run_with_a_skipped_step_resumes_bit_exactly(work, tmp_path, monkeypatch):
    _, corpus, env, good, _ = work
    real_call, real_get_batch = femto.train.TrainStep.__call__, femto.train.get_batch
    calls, batches = [], []

    def one_nan(self, x, y, rng, *reducer):  # the first step after the good run's 6 is bad
        loss = real_call(self, x, y, rng, *reducer)
        calls.append(loss)
        return float("nan") if len(calls) == 1 else loss

    def stopping_get_batch(*args, **kwargs):
        batches.append(1)
        if len(batches) == 2:  # during step 8: Ctrl-C, which saves after the step
            os.kill(os.getpid(), signal.SIGINT)
        return real_get_batch(*args, **kwargs)

    monkeypatch.setattr(femto.train.TrainStep, "__call__", one_nan)
    args = ["train", "--data", corpus, *TINY, "--steps", "12"]
    straight = copy_run(good, tmp_path / "straight")
    assert invoke([*args, "--out", straight], env).exit_code == 0
    calls.clear()
    monkeypatch.setattr(femto.train, "get_batch", stopping_get_batch)
    resumed = copy_run(good, tmp_path / "resumed")
    assert invoke([*args, "--out", resumed], env).exit_code == 0
    assert ckpt.load_state(resumed).step == 8
    monkeypatch.setattr(femto.train, "get_batch", real_get_batch)
    calls.append(0.0)  # no more NaN
    assert invoke([*args, "--out", resumed], env).exit_code == 0
    for name in (ckpt.MODEL_FILE, ckpt.OPTIMIZER_FILE):
        a, b = ckpt.load_safetensors(straight / name)[0], ckpt.load_safetensors(resumed / name)[0]
        assert all(np.array_equal(a[k], b[k]) for k in a), name


def test_many_bad_steps_in_a_row_stop_with_one_line(work, tmp_path, monkeypatch):
    _, corpus, env, good, _ = work
    run = copy_run(good, tmp_path / "run")
    before = checkpoint_bytes(run)
    monkeypatch.setattr(femto.train.TrainStep, "__call__", lambda self, x, y, rng, *reducer: float("inf"))
    args = ["train", "--data", corpus, "--out", run, *TINY, "--steps", "40", "--save-every", "2"]
    result = invoke(args, env)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"Error: training diverged at step {6 + MAX_SKIPS}: {MAX_SKIPS} steps in a row skipped, "
        "the last because its loss is inf"
    )
    # the saves between the skipped steps hold the weights and moments they started from
    state = ckpt.load_state(run)
    assert state.step == 6 + MAX_SKIPS - 1 - (6 + MAX_SKIPS - 1) % 2
    for name, loader in (("model", ckpt.load_weights), ("optimizer", ckpt.load_optimizer_state)):
        now, then = (
            loader(run, state),
            ckpt.decode_safetensors(before[f"{name}.safetensors"], name)[0],
        )
        assert now.keys() == then.keys() and all(np.array_equal(now[k], then[k]) for k in now)


def tiny_model(backend):
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    model = GPT(config, backend, np.random.default_rng(0))
    return model, AdamW(model.params)


def tokens():
    return np.random.default_rng(0).integers(0, 11, 500)


def test_optimizer_skips_a_non_finite_gradient(backend):
    model, optimizer = tiny_model(backend)
    _, loss = model(*[np.random.default_rng(1).integers(0, 11, (2, 8)) for _ in range(2)])
    loss.backward()
    assert optimizer.step(1e-3, skip_nonfinite=True) and optimizer.step_count == 1
    weights = model.to_numpy()
    name = next(iter(model.params))
    grad = model.params[name].grad
    grad.copy_from_numpy(np.full(grad.shape, np.inf, np.float32))
    assert not optimizer.step(1e-3, skip_nonfinite=True)
    assert optimizer.step_count == 1
    after = model.to_numpy()
    assert all(np.array_equal(weights[k], after[k]) for k in weights)
    assert all(np.isfinite(optimizer.state_arrays()[k]).all() for k in optimizer.state_arrays())


@pytest.mark.parametrize("kind", ["parameters", "exp_avg", "exp_avg_sq"])
def test_state_check_names_what_is_not_finite(backend, kind):
    model, optimizer = tiny_model(backend)
    guard = DivergenceGuard(model, optimizer, tokens(), 2, seed=0)
    guard.accepted(2.4)
    assert guard.state_problem() is None
    name = max(model.params)
    target = {
        "parameters": model.params[name],
        "exp_avg": optimizer.m[name],
        "exp_avg_sq": optimizer.v[name],
    }[kind]
    values = np.zeros(target.shape, np.float32)
    values.reshape(-1)[-1] = np.nan
    target.copy_from_numpy(values)
    assert guard.state_problem() == f"{kind} hold NaN or infinity"


def test_state_check_refuses_finite_but_ruined_weights(backend):
    # what lr 1e38 makes: every weight finite, near 1e38, and a loss of inf or far above the mean
    model, optimizer = tiny_model(backend)
    guard = DivergenceGuard(model, optimizer, tokens(), 2, seed=0)
    guard.accepted(2.4)
    for p in model.params.values():
        p.copy_from_numpy(np.where(np.arange(p.size) % 2, 1e38, -1e38).reshape(p.shape))
    problem = guard.state_problem()
    assert problem is not None and problem.startswith("the loss of the state to save is")


def test_loss_rules():
    guard = DivergenceGuard.__new__(DivergenceGuard)
    guard.mean, guard.skips_in_a_row = None, 0
    assert guard.loss_problem(1e9) is None  # no running mean yet: only non-finite is refused
    guard.accepted(0.05)  # a memorized corpus: a batch at 4x the mean is noise, not a spike
    assert guard.loss_problem(0.2) is None
    guard.mean = None
    assert guard.loss_problem(float("nan")) == "loss is nan"
    guard.accepted(2.0)
    assert guard.loss_problem(guard.limit()) is None
    assert guard.limit() == 2.0 * SPIKE_FACTOR + SPIKE_MARGIN
    assert "far above its running mean 2" in guard.loss_problem(guard.limit() * 1.01)
    for _ in range(MAX_SKIPS - 1):
        guard.skipped(7, "loss is nan")
    with pytest.raises(TrainingDiverged, match="at step 7"):
        guard.skipped(7, "loss is nan")
