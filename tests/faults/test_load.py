"""A loaded machine: femto's OpenMP threads sleep when idle unless the user chose a wait policy
(they spun for a millisecond before, holding cores busy processes need), and the benchmark's
--load option really starts and stops its busy processes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from helpers_a import REPO, child_env

_spec = importlib.util.spec_from_file_location("train_speed", REPO / "bench" / "train_speed.py")
train_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_speed)


def policy_in_child(**env) -> str:
    base = {
        k: v for k, v in child_env({}).items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    }
    code = (
        "import os, femto; "
        "print(os.environ.get('OMP_WAIT_POLICY', '-'), os.environ.get('GOMP_SPINCOUNT', '-'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@pytest.mark.parametrize(
    ("env", "policy"),
    [
        ({}, "- 1000"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE -"),
        ({"GOMP_SPINCOUNT": "5000"}, "- 5000"),
    ],
)
def test_wait_policy_default_yields_to_the_user(env, policy):
    assert policy_in_child(**env) == policy


def test_load_processes_spin_and_stop():
    procs = train_speed.start_load(2)
    try:
        assert all(p.poll() is None for p in procs)
    finally:
        train_speed.stop_load(procs)
    assert all(p.returncode is not None for p in procs)


def test_omp_wait_choices_reach_the_worker_environment(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setitem(train_speed.USER_WAIT, "OMP_WAIT_POLICY", "PASSIVE")  # as if given at start
    env = train_speed.worker_env(2, train_speed.OMP_WAIT["libgomp"])
    assert "OMP_WAIT_POLICY" not in env and env["GOMP_SPINCOUNT"] == "300000"
    assert env["OMP_NUM_THREADS"] == "2"
    femto_env = train_speed.worker_env(1, train_speed.OMP_WAIT["femto"])
    assert femto_env["OMP_WAIT_POLICY"] == "PASSIVE"  # the user's choice passes through
    args = train_speed.parse_args(["--load", "3", "--omp-wait", "passive", "--configs", "a"])
    assert (args.load, args.omp_wait, args.configs) == (3, "passive", ["A"])
    with pytest.raises(SystemExit):
        train_speed.parse_args(["--load", "-1"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
