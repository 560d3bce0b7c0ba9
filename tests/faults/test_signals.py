"""Signals: SIGTERM (what schedulers and `docker stop` send) finishes the step, saves and exits 0,
as Ctrl-C does; SIGINT or SIGTERM during start-up ends with one line and leaves nothing behind."""

from __future__ import annotations

import json
import signal

import pytest
from helpers_a import (
    FOREVER,
    TINY,
    assert_run_whole,
    copy_run,
    femto_child,
    make_workdir,
    one_line,
    train_run,
    wait_for_line,
)

from femto import checkpoint as ckpt

# holds start-up (preparing the run) open until a signal comes, and says when it is there
STALL_STARTUP = """
import sys, time
import femto.train
_prepare = femto.train.prepare_run
def _stalled(*args, **kwargs):
    print("PREPARING", flush=True)
    time.sleep(60)
    return _prepare(*args, **kwargs)
femto.train.prepare_run = _stalled
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    corpus, env = make_workdir(root)
    return corpus, env, train_run(root / "good", corpus, env, steps=2)


def test_sigterm_finishes_the_step_saves_and_exits_zero(work, tmp_path):
    corpus, env, good = work
    run = copy_run(good, tmp_path / "run")
    child = femto_child(["train", "--data", corpus, "--out", run, *TINY, *FOREVER], env)
    wait_for_line(child, "step 5/")
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "SIGTERM: finishing this step and saving" in err
    done = next(line for line in out.splitlines() if line.startswith("done: step "))
    step = int(done.split()[2].rstrip(","))
    assert step >= 5 and ckpt.load_state(run).step == step  # no step lost
    last = json.loads((run / ckpt.METRICS_FILE).read_text().splitlines()[-1])
    assert last["step"] == step
    assert_run_whole(run)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_start_up_is_one_line(work, tmp_path, sig):
    corpus, env, _ = work
    run = tmp_path / "new-run"
    child = femto_child(["train", "--data", corpus, "--out", run, *TINY], env, STALL_STARTUP)
    wait_for_line(child, "PREPARING")
    child.send_signal(sig)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 1
    assert one_line(err) == (
        f"Error: interrupted during start-up: nothing trained, {run} left as it was"
    )
    assert not run.exists()  # the directory the lock made is gone again


def test_a_signal_during_start_up_leaves_a_run_as_it_was(work, tmp_path):
    corpus, env, good = work
    run = copy_run(good, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    child = femto_child(["train", "--data", corpus, "--out", run, *TINY], env, STALL_STARTUP)
    wait_for_line(child, "PREPARING")
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 1 and "interrupted during start-up" in one_line(err)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_signal_while_femto_is_still_importing_is_one_line(work, tmp_path):
    """The `femto` entry point (femto_launcher.py) runs before femto and numpy are imported: a Ctrl-C
    there, the first fraction of a second, is one line too, not an import traceback."""
    import subprocess
    import sys

    from helpers_a import child_env

    corpus, env, _ = work
    # femto.cli's import is held open (a finder that sleeps), so the signal lands inside it
    code = (
        "import sys, time\n"
        "class Slow:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'femto.cli':\n"
        "            print('importing', flush=True)\n"
        "            time.sleep(60)\n"
        "sys.meta_path.insert(0, Slow())\n"
        "import femto_launcher\n"
        "femto_launcher.main()\n"
    )
    args = ["train", "--data", corpus, "--out", tmp_path / "run", *TINY]
    child = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)], env=child_env(env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for_line(child, "importing")
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 1
    assert one_line(err).startswith("Error: interrupted during start-up")
    assert not (tmp_path / "run").exists()
