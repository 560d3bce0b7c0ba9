"""Data-parallel training through `mpiexec -n 2`, one thread per rank, each run in a subprocess.

2 ranks x grad-accum 1 must train exactly what 1 rank x grad-accum 2 trains (losses within 1e-5 over
30 steps, the same weights after), also across a resume that changes the rank count; rank 0 alone
writes; a rank killed with -9, or an exception on one rank, ends the job within seconds and leaves
a resumable run; Ctrl-C on mpiexec stops every rank after the same step with one save; a user error
on one rank is reported once, naming it. The OpenCL backend gets the equivalence check too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from femto import checkpoint as ckpt
from femto.data import bundled_root

ROOT = pathlib.Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason='mpi4py or mpiexec missing (pip install -e ".[mpi]")',
)
TIMEOUT_S = 180
STEPS = 30
# warm-up longer than the run: the learning rate of a step does not depend on --steps, so a run
# stopped at step 15 and resumed to 30 follows the straight run's schedule
TINY = [
    "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
    "--dropout", "0.1", "--warmup", "100", "--lr", "3e-3", "--eval-every", "1000",
    "--eval-batches", "2", "--log-every", "1", "--save-every", "1000", "--sample-tokens", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("mpi")
    text = (bundled_root() / "shakespeare" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    (path / "small.txt").write_text(text[:20_000], encoding="utf-8")
    return path


def environment(workdir: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", FEMTO_CACHE_DIR=str(workdir / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for name in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        env.pop(name, None)
    return env


def femto_train(workdir, out: str, ranks: int, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "femto", "train", "--out", out, "--data", "small.txt", *args]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    return subprocess.run(
        command, cwd=workdir, env=environment(workdir), capture_output=True, text=True,
        timeout=TIMEOUT_S, check=False,
    )  # fmt: skip


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def losses(run: pathlib.Path) -> np.ndarray:
    records = ckpt.read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    return np.array([r["loss"] for r in records])


def weights(run: pathlib.Path) -> dict[str, np.ndarray]:
    return ckpt.load_weights(run, ckpt.load_state(run))


def assert_same_training(a: pathlib.Path, b: pathlib.Path) -> None:
    np.testing.assert_allclose(losses(a), losses(b), rtol=0, atol=1e-5)
    wa, wb = weights(a), weights(b)
    for name in wa:
        np.testing.assert_allclose(wa[name], wb[name], rtol=0, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def straight(workdir) -> pathlib.Path:
    """The reference: 1 rank, --grad-accum 2, 30 steps."""
    ok(femto_train(workdir, "straight", 1, *TINY, "--steps", str(STEPS), "--grad-accum", "2"))
    return workdir / "straight"


def test_two_ranks_train_what_one_rank_with_twice_the_accumulation_does(workdir, straight):
    proc = ok(femto_train(workdir, "two", 2, *TINY, "--steps", str(STEPS), "--grad-accum", "1"))
    assert "global batch 8 sequences = 4 x --grad-accum 1 x 2 ranks" in proc.stdout
    assert proc.stdout.count("done: step 30") == 1  # rank 0 alone prints
    assert len(losses(workdir / "two")) == STEPS
    assert_same_training(workdir / "two", straight)
    config = json.loads((workdir / "two" / "config.json").read_text())
    assert config["train"]["ranks"] == 2 and config["train"]["global_batch"] == 8
    assert config["rng"] == {"micro_batches": 2 * STEPS}
    assert (
        config["tokens_seen"] == json.loads((straight / "config.json").read_text())["tokens_seen"]
    )


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_run_resumes_on_another_number_of_ranks(workdir, straight, first, then):
    out = f"resumed-{first}-{then}"
    accum = {1: "2", 2: "1"}  # the same global batch of 8 sequences either way
    ok(femto_train(workdir, out, first, *TINY, "--steps", "15", "--grad-accum", accum[first]))
    ok(femto_train(workdir, out, then, "--steps", str(STEPS), "--grad-accum", accum[then]))
    assert_same_training(workdir / out, straight)


def test_rank_zero_alone_writes(workdir):
    """Each rank runs in its own directory with its own cache: rank 1's --out stays absent, and it
    builds its own token cache (ranks on hosts without a shared filesystem)."""
    for name in ("rank0", "rank1"):
        (workdir / name).mkdir(exist_ok=True)
        shutil.copy(workdir / "small.txt", workdir / name / "small.txt")
    command = [sys.executable, "-m", "femto", "train", "--out", "run", "--data", "small.txt",
               *TINY, "--steps", "3", "--save-every", "1"]  # fmt: skip
    blocks = []
    for name in ("rank0", "rank1"):
        blocks += [":"] if blocks else []
        cache = str(workdir / name / "cache")
        blocks += ["-n", "1", "-wdir", str(workdir / name), "-env", "FEMTO_CACHE_DIR", cache,
                   *command]  # fmt: skip
    proc = subprocess.run(
        [MPIEXEC, *blocks], env=environment(workdir), capture_output=True, text=True,
        timeout=TIMEOUT_S, check=False,
    )  # fmt: skip
    ok(proc)
    assert ckpt.load_state(workdir / "rank0" / "run").step == 3
    assert not (workdir / "rank1" / "run").exists()
    assert list((workdir / "rank1" / "cache" / "tokens").glob("small.txt.char.*"))


def test_a_user_error_on_one_rank_is_reported_once_naming_it(workdir):
    """Rank 1 runs where the corpus is missing: one line names rank 1, every rank stops, exit 1."""
    (workdir / "nocorpus").mkdir(exist_ok=True)
    command = [sys.executable, "-m", "femto", "train", "--out", "run", "--data", "small.txt",
               *TINY, "--steps", "3"]  # fmt: skip
    proc = subprocess.run(
        [MPIEXEC, "-n", "1", "-wdir", str(workdir), *command, ":",
         "-n", "1", "-wdir", str(workdir / "nocorpus"), *command],
        env=environment(workdir), capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "rank 1 of 2" in errors[0] and "small.txt" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def rank_pid(mpiexec: subprocess.Popen, rank: int) -> int | None:
    """The pid of `rank` among mpiexec's descendants (hydra starts them through a proxy)."""
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        mine = f"MPI_TEST_PARENT={mpiexec.pid}".encode() in environ
        if mine and b"femto" in cmdline and f"PMI_RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def start_long_run(workdir, out: str) -> subprocess.Popen:
    env = environment(workdir)
    env["MPI_TEST_PARENT"] = "pending"
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "femto", "train", "--out", out,
               "--data", "small.txt", *TINY, "--steps", "100000", "--save-every", "5"]  # fmt: skip
    proc = subprocess.Popen(
        ["sh", "-c", 'MPI_TEST_PARENT=$$ exec "$@"', "sh", *command], cwd=workdir, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT_S
    while not ckpt.has_checkpoint(workdir / out):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    return proc


def test_kill_9_of_rank_1_ends_the_job_and_the_run_resumes(workdir):
    proc = start_long_run(workdir, "killed")
    pid = rank_pid(proc, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    try:
        stdout, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the job outlived its killed rank by 30 s") from None
    assert time.monotonic() - t0 < 30
    assert proc.returncode != 0
    # MPICH names the dead process by pid; femto's start line says which rank has that pid
    named = re.search(r"PID (\d+) RUNNING AT", stdout + stderr)
    assert named and f"rank 1 pid {named.group(1)}@" in stdout, stdout + stderr
    state = ckpt.load_state(workdir / "killed")  # the last checkpoint is whole
    weights(workdir / "killed")
    ok(femto_train(workdir, "killed", 1, "--steps", str(state.step + 2)))
    assert ckpt.load_state(workdir / "killed").step == state.step + 2


def test_ctrl_c_on_mpiexec_stops_every_rank_after_the_same_step_and_saves_once(workdir):
    proc = start_long_run(workdir, "interrupted")
    proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, stderr
    state = ckpt.load_state(workdir / "interrupted")
    assert stdout.count("done: step") == 1 and f"done: step {state.step} of" in stdout
    assert len(losses(workdir / "interrupted")) == state.step
    assert state.rng == {"micro_batches": 2 * state.step}


def test_an_exception_on_one_rank_ends_the_job_with_one_line_naming_it(workdir):
    """Rank 0's next save fails (a directory squats on the file it writes first): it prints one line
    naming itself and aborts; rank 1, waiting for that save, goes down with it within seconds."""
    proc = start_long_run(workdir, "failing")
    saved = ckpt.load_state(workdir / "failing").step
    deadline = time.monotonic() + 30
    while True:  # the name is taken by a real file while a save is under way
        try:
            (workdir / "failing" / ".model.safetensors.pending").mkdir()
            break
        except FileExistsError:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the job outlived rank 0's exception by 60 s") from None
    assert proc.returncode != 0
    lines = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: rank 0 of 2 failed: "), stderr
    assert ckpt.load_state(workdir / "failing").step >= saved  # the last checkpoint stays whole
    weights(workdir / "failing")


def test_two_opencl_ranks_train_what_one_does_with_twice_the_accumulation(workdir):
    from femto.backend.base import get_backend
    from femto.errors import BackendUnavailable

    try:
        get_backend("opencl")
    except BackendUnavailable as exc:
        pytest.skip(f"OpenCL unavailable: {exc}")
    common = [*TINY, "--device", "opencl", "--steps", "6"]
    ok(femto_train(workdir, "cl-one", 1, *common, "--grad-accum", "2"))
    ok(femto_train(workdir, "cl-two", 2, *common, "--grad-accum", "1"))
    assert_same_training(workdir / "cl-two", workdir / "cl-one")
