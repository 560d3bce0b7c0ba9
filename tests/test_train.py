"""The training loop: schedule, option checks, resume equivalence (stop + resume == straight run),
conflicting options on resume, metrics, and a small Shakespeare run that must learn."""

from __future__ import annotations

import itertools
import json
import math
import pathlib
import threading

import numpy as np
import pytest

from femto import checkpoint as ckpt
from femto.data import bundled_root
from femto.errors import ConfigError, DatasetError
from femto.train import TrainConfig, lr_at, prepare_run, train

SHAKESPEARE = bundled_root() / "shakespeare" / "tinyshakespeare.txt"
TINY_MODEL = {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}


@pytest.fixture
def corpus(tmp_path) -> str:
    path = tmp_path / "small.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return str(path)


def tiny_options(corpus: str, **changes) -> dict:
    return {
        "data": corpus, "steps": 6, "batch_size": 4, "grad_accum": 2, "warmup": 2,
        "eval_every": 3, "eval_batches": 2, "save_every": 100, "log_every": 1, "lr": 3e-3,
        **changes,
    }  # fmt: skip


def snapshot(directory: pathlib.Path) -> dict:
    if not directory.exists():
        return {}
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-4)
    lrs = [lr_at(i, cfg) for i in range(100)]
    assert lrs[0] == pytest.approx(1e-3 / 11)
    assert lrs[9] == pytest.approx(1e-3 * 10 / 11)
    assert lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[55] == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    assert lr_at(5, TrainConfig(steps=3, warmup=10)) == pytest.approx(1e-3 * 6 / 11)


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", 0), ("batch_size", -1), ("grad_accum", 0), ("eval_every", 0), ("save_every", -5),
     ("eval_batches", 0), ("warmup", -1), ("vocab", 0)],
)  # fmt: skip
def test_bad_sizes_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')} must be"):
        TrainConfig(**{field: value})


def test_lr_checks():
    with pytest.raises(ConfigError, match="--lr must be a positive number"):
        TrainConfig(lr=0.0)
    with pytest.raises(ConfigError, match="--min-lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)


def run_to_end(run_dir, cache, options, model=TINY_MODEL, stop_at=None):
    run = prepare_run(run_dir, dict(model), options, cache)
    stop = threading.Event()
    events = []

    def on_event(event):
        events.append(event)
        if event["kind"] == "step" and event["step"] == stop_at:
            stop.set()

    state = train(run, on_event, stop)
    return state, events


def test_stopped_and_resumed_run_ends_where_a_straight_run_does(tmp_path, corpus):
    cache = tmp_path / "cache"
    model = dict(TINY_MODEL, dropout=0.1)  # dropout seeds come from the saved RNG too
    straight, _ = run_to_end(tmp_path / "straight", cache, tiny_options(corpus), model)
    first, events = run_to_end(tmp_path / "resumed", cache, tiny_options(corpus), model, stop_at=4)
    done = events[-1]
    assert first.step == 4 and (done["kind"], done["step"], done["stopped"]) == ("done", 4, True)
    assert ckpt.load_state(tmp_path / "resumed").step == 4
    timing = ckpt.load_state(tmp_path / "resumed").timing
    assert timing["steps"] == 4 and timing["evals"] == 1 and timing["wall_s"] > 0
    second, events = run_to_end(tmp_path / "resumed", cache, tiny_options(corpus), {})
    assert events[0]["resumed"] and events[0]["step"] == 4
    # the time totals carry over: elapsed starts where the first session ended
    assert events[0]["elapsed_s"] == timing["wall_s"]
    assert events[-1]["timing"].steps == 6 and events[-1]["timing"].wall_s > timing["wall_s"]
    assert second.step == straight.step == 6
    a_state, b_state = ckpt.load_state(tmp_path / "straight"), ckpt.load_state(tmp_path / "resumed")
    a = ckpt.load_weights(tmp_path / "straight", a_state)
    b = ckpt.load_weights(tmp_path / "resumed", b_state)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6, err_msg=name)
    oa = ckpt.load_optimizer_state(tmp_path / "straight", a_state)
    ob = ckpt.load_optimizer_state(tmp_path / "resumed", b_state)
    for name in oa:
        np.testing.assert_allclose(ob[name], oa[name], rtol=1e-5, atol=1e-9, err_msg=name)
    assert (
        a_state.rng == b_state.rng and a_state.tokens_seen == b_state.tokens_seen == 6 * 4 * 16 * 2
    )
    assert a_state.best_val_loss == pytest.approx(b_state.best_val_loss)
    steps = [r["step"] for r in ckpt.read_metrics(tmp_path / "resumed")]
    assert steps == [1, 2, 3, 4, 5, 6]  # no duplicates from the resumed steps
    assert [r["step"] for r in ckpt.read_metrics(tmp_path / "straight")] == steps


def test_metrics_records_have_the_documented_fields(tmp_path, corpus):
    run_to_end(tmp_path / "run", tmp_path / "cache", tiny_options(corpus, steps=3))
    records = ckpt.read_metrics(tmp_path / "run")
    assert {"step", "loss", "lr", "dt_ms", "tokens_per_s"} <= set(records[0])
    assert "val_loss" not in records[0] and "val_loss" in records[2]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["step"] == 3 and config["tokenizer"]["kind"] == "char"
    assert config["train"]["data"] == corpus and config["model"]["n_embd"] == 16


def test_conflicting_options_on_resume_leave_the_run_alone(tmp_path, corpus):
    cache = tmp_path / "cache"
    run_to_end(tmp_path / "run", cache, tiny_options(corpus, steps=2))
    before = snapshot(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"--n-layer 2 \(the run has 1\)"):
        prepare_run(tmp_path / "run", {"n_layer": 2}, {}, cache)
    with pytest.raises(ConfigError, match=r"--tokenizer 'byte' \(the run has 'char'\)"):
        prepare_run(tmp_path / "run", {}, {"tokenizer": "byte"}, cache)
    assert snapshot(tmp_path / "run") == before
    # training options may change: more steps, another learning rate
    run = prepare_run(tmp_path / "run", {"n_layer": 1}, {"steps": 3, "lr": 1e-3}, cache)
    assert run.resumed and run.config.steps == 3 and run.config.lr == 1e-3


def test_sentencepiece_model_type_is_part_of_a_runs_identity(tmp_path, corpus):
    # the run's tokenizer file is unigram: accepting --sp-model-type bpe on resume would record a
    # model type in config.json that its tokenizer does not have
    cache = tmp_path / "cache"
    options = tiny_options(corpus, steps=1, tokenizer="sentencepiece", vocab=330)
    run_to_end(tmp_path / "run", cache, options)
    before = snapshot(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"--sp-model-type 'bpe' \(the run has None\)"):
        prepare_run(tmp_path / "run", {}, {"sp_model_type": "bpe"}, cache)
    assert snapshot(tmp_path / "run") == before


def test_corpus_too_short_for_a_window(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("to be or not to be\n" * 2)
    with pytest.raises(DatasetError, match="fewer than one training window"):
        prepare_run(tmp_path / "run", dict(TINY_MODEL), {"data": str(path)}, tmp_path / "cache")
    assert not (tmp_path / "run").exists()


def test_small_shakespeare_model_learns(tmp_path):
    """A scaled-down version of the issue's quality run: 200 steps of a 2-layer, 64-wide model
    (about 7 s on one core; it reaches about 2.49)."""
    options = {
        "data": "shakespeare", "steps": 200, "batch_size": 16, "warmup": 20, "lr": 3e-3,
        "min_lr": 3e-4, "eval_every": 250, "eval_batches": 8, "save_every": 1000,
    }  # fmt: skip
    model = {"block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 64}
    state, _ = run_to_end(tmp_path / "run", tmp_path / "cache", options, model)
    # untrained: ln(65) = 4.17; unigram statistics alone give about 3.3
    assert state.best_val_loss < 2.6, f"val loss {state.best_val_loss:.3f}"
    assert math.isfinite(state.best_val_loss)
