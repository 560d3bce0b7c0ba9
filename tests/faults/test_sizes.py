"""Sizes that cannot fit are refused before anything is allocated, with the estimate and what is
free. `femto train --n-embd 100000` or `--batch-size 1000000000` fails in well under a second with
one line and leaves no run directory; a crafted config.json is refused the same way by every reader.
"""

from __future__ import annotations

import json
import pathlib
import time

import pytest

from femto.errors import ConfigError
from femto.memory_estimate import (
    available_bytes,
    check_fits,
    n_params,
    training_bytes,
    weights_bytes,
)
from femto.model import GPTConfig
from tests.faults.helpers_b import TINY, assert_one_line_error, invoke, train_tiny, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
    return write_corpus(tmp_path_factory.mktemp("sizes") / "corpus.txt")


@pytest.mark.parametrize(
    "option", [["--n-embd", "100000", "--n-head", "4"], ["--batch-size", "1000000000"],
               ["--n-layer", "100000000"], ["--block-size", "10000000"]],
)  # fmt: skip
def test_train_refuses_sizes_that_cannot_fit(corpus, tmp_path, option):
    run = tmp_path / "run"
    args = ["train", "--data", corpus, "--out", run, *TINY, *option]
    start = time.perf_counter()
    result = invoke(args, tmp_path / "cache")
    seconds = time.perf_counter() - start
    assert_one_line_error(result, "needs at least", "of memory", "is free")
    assert seconds < 3.0, f"refusing took {seconds:.1f} s"  # well under a second on a quiet machine
    assert not run.exists(), "no half-made run directory"
    assert not (tmp_path / "cache").exists(), "nothing encoded either"


def test_a_resumed_run_is_checked_with_its_new_batch_size(tmp_path):
    run = train_tiny(tmp_path)
    result = invoke(["train", "--out", run, "--steps", "4", "--batch-size", "1000000000"],
                    tmp_path / "cache")  # fmt: skip
    assert_one_line_error(result, "at batch 1,000,000,000", "of memory")
    assert json.loads((run / "config.json").read_text())["step"] == 2


def test_a_crafted_config_is_refused_by_every_reader(tmp_path):
    run = train_tiny(tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["model"]["n_embd"] = 2_000_000
    config["model"]["n_head"] = 2
    (run / "config.json").write_text(json.dumps(config))
    for args in (["sample", "--out", run], ["eval", "--out", run], ["train", "--out", run],
                 ["tokenize", "encode", "--out", run, "hi"]):  # fmt: skip
        start = time.perf_counter()
        assert_one_line_error(invoke(args, tmp_path / "cache"), "config.json", "of memory")
        assert time.perf_counter() - start < 3.0


def test_the_parameter_count_matches_the_model():
    small = GPTConfig(vocab_size=500, n_layer=3, n_embd=64, n_head=4, bias=False)
    for config in (GPTConfig(), small):
        assert n_params(config) == config.num_params(non_embedding=False), config


def test_estimates_grow_with_what_they_hold():
    config = GPTConfig()
    assert training_bytes(config, 32) > training_bytes(config, 16) > 4 * weights_bytes(config)
    assert training_bytes(GPTConfig(n_layer=12), 16) > training_bytes(config, 16)


def test_the_defaults_fit_this_machine():
    free = available_bytes()
    assert free is None or free > 0
    check_fits(training_bytes(GPTConfig(), 16), "the default run", ConfigError)


def test_the_message_holds_the_estimate_and_what_is_free():
    with pytest.raises(ConfigError) as caught:
        check_fits(3 << 30, "a model", ConfigError, available=1 << 30)
    assert str(caught.value).startswith("a model needs at least 3.0 GiB of memory, but only 1.0 GiB")
    check_fits(1 << 30, "a model", ConfigError, available=3 << 30)  # fits: no error
