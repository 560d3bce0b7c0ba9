"""The data-parallel pieces that need no MPI: the launcher's world size, the missing-mpi4py error, a
plain run never importing mpi4py, gradient buckets, the graph's leaf-gradient hook and the replay that
starts each bucket's reduction as soon as backward has finished it. tests/test_mpi.py runs the rest
under mpiexec."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from femto.cli import mpi
from femto.distributed import SingleProcess, connect, make_buckets, world_size
from femto.errors import ConfigError
from femto.graph import backward
from femto.model import GPT, GPTConfig
from femto.optim import AdamW
from femto.train import TrainStep

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def test_world_size_comes_from_the_launcher_environment():
    assert world_size({}) == 1
    assert world_size({"PMI_SIZE": "4"}) == 4
    assert world_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    with pytest.raises(ConfigError, match="PMI_SIZE='x'"):
        world_size({"PMI_SIZE": "x"})
    assert isinstance(connect({"PMI_SIZE": "1"}), SingleProcess)


def test_opencl_ranks_take_the_gpus_of_their_host_in_turn(monkeypatch):
    from femto import distributed
    from femto.backend import opencl

    devices = [
        {"platform": 0, "device": 0, "type": "CPU"},
        {"platform": 1, "device": 0, "type": "GPU"},
        {"platform": 1, "device": 1, "type": "GPU"},
    ]
    monkeypatch.setattr(opencl, "list_devices", lambda: devices)
    assert [distributed._local_gpu(r) for r in range(3)] == [
        "opencl:1:0",
        "opencl:1:1",
        "opencl:1:0",
    ]
    monkeypatch.setattr(
        opencl, "list_devices", lambda: devices[:1]
    )  # no GPU: the devices there are
    assert distributed._local_gpu(1) == "opencl:0:0"


def test_the_stream_resumes_at_its_saved_position_or_after_an_old_runs_tokens():
    from femto import checkpoint as ckpt
    from femto.train import TrainConfig, stream_position

    train = TrainConfig(batch_size=4).to_dict()
    state = ckpt.RunState(CONFIG, train, step=5, tokens_seen=5 * 3 * 4 * 8)
    state.rng = {"micro_batches": 17}
    assert stream_position(state) == 17
    state.rng = {"data": {"bit_generator": "PCG64"}}  # saved before the stream was global
    assert stream_position(state) == 15  # 3 micro-batches of 4 x 8 tokens per step


def run_python(code: str, env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    full = dict(os.environ, **env)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
    full["FEMTO_CACHE_DIR"] = str(tmp_path / "cache")
    for name in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if name not in env:
            full.pop(name, None)
    return subprocess.run(
        [sys.executable, "-c", code], env=full, cwd=tmp_path, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


TRAIN_ONE_STEP = """
import sys
from femto.cli import main
sys.argv = ["femto", "train", "--out", "run", "--steps", "1", "--n-layer", "1", "--n-embd", "16",
            "--n-head", "2", "--block-size", "16", "--batch-size", "2", "--eval-batches", "1",
            "--sample-tokens", "0"]
try:
    main()
finally:
    print("mpi4py imported:", "mpi4py" in sys.modules, file=sys.stderr)
"""


def test_a_plain_run_never_imports_mpi4py(tmp_path):
    proc = run_python(TRAIN_ONE_STEP, {}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "mpi4py imported: False" in proc.stderr


@pytest.fixture
def no_mpi4py(tmp_path) -> str:
    """A directory to put first on PYTHONPATH that makes `import mpi4py` fail."""
    shadow = tmp_path / "shadow" / "mpi4py"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named mpi4py')\n")
    return str(tmp_path / "shadow")


def test_several_processes_without_mpi4py_stop_with_one_line(tmp_path, no_mpi4py):
    proc = run_python(TRAIN_ONE_STEP, {"PYTHONPATH": no_mpi4py, "PMI_SIZE": "2", "PMI_RANK": "0"},
                      tmp_path)  # fmt: skip
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("mpi4py imported")]
    assert lines == [
        (
            "Error: this run was launched as 2 processes but mpi4py is not installed: "
            'pip install "femto[mpi]" (mpi4py and MPICH)'
        )
    ]
    assert not (tmp_path / "run").exists()
    # the other ranks stop too, silently: rank 0 has said it
    proc = run_python(TRAIN_ONE_STEP, {"PYTHONPATH": no_mpi4py, "PMI_SIZE": "2", "PMI_RANK": "1"},
                      tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert [ln for ln in proc.stderr.splitlines() if not ln.startswith("mpi4py imported")] == []


def packed_model(backend):
    model = GPT(CONFIG, backend, np.random.default_rng(0))
    optimizer = AdamW(model.params, lr=1e-3)
    return model, optimizer


def test_buckets_tile_each_packed_gradient_buffer_from_its_end(cpu_backend):
    _, optimizer = packed_model(cpu_backend)
    packed = optimizer.packed()
    buckets = make_buckets(cpu_backend, packed, bucket_bytes=4 * 600)
    for group in packed:
        mine = [b for b in buckets if set(b.names) <= set(group["offsets"])]
        # consecutive slices from the end of the buffer back to its start, covering all of it
        spans = [(group["offsets"][b.names[-1]], b.size) for b in mine]
        assert spans[0][0] + spans[0][1] == group["size"] and spans[-1][0] == 0
        for (start, _), (prev_start, prev_size) in zip(spans[1:], spans):
            assert start + _ == prev_start
        assert sum(size for _, size in spans) == group["size"]
        for b, (start, size) in zip(mine, spans):
            b.view[:] = 7.0  # a view into the packed buffer, not a copy
            assert np.all(group["grad"][start : start + size] == 7.0)
            assert size >= 600 or start == 0  # cut at the first parameter past the limit
        group["grad"][:] = 0.0
    assert sorted(n for b in buckets for n in b.names) == sorted(optimizer.params)


def test_the_leaf_hook_fires_once_per_parameter_when_its_gradient_is_final(cpu_backend, rng):
    model, _ = packed_model(cpu_backend)
    ids = rng.integers(0, CONFIG.vocab_size, size=(2, CONFIG.block_size))
    _, loss = model(ids, ids)
    names = {id(p): n for n, p in model.params.items()}
    seen: dict[str, np.ndarray] = {}

    def on_leaf_grad(leaf):
        assert names[id(leaf)] not in seen
        seen[names[id(leaf)]] = leaf.grad.numpy().copy()

    backward(loss, on_leaf_grad=on_leaf_grad)
    assert sorted(seen) == sorted(model.params)
    for name, p in model.params.items():
        np.testing.assert_array_equal(seen[name], p.grad.numpy(), err_msg=name)
    # and not all at the end: the last block's weights are final before the embeddings' backward
    first = next(iter(seen))
    assert first.startswith(f"transformer.h.{CONFIG.n_layer - 1}.") or first in (
        "transformer.ln_f.weight", "transformer.ln_f.bias",
    )  # fmt: skip


class RecordingReducer:
    """Stands in for GradientReducer: notes what each bucket holds when its reduction starts."""

    def __init__(self, backend, optimizer):
        self.buckets = make_buckets(backend, optimizer.packed(), bucket_bytes=4 * 2000)
        self.at_start: dict[int, np.ndarray] = {}
        self.progress_calls = 0

    def start(self, index):
        assert index not in self.at_start
        self.at_start[index] = np.array(self.buckets[index].view, copy=True)

    def start_all(self):
        for index in range(len(self.buckets)):
            if index not in self.at_start:
                self.start(index)

    def progress(self):
        self.progress_calls += 1


def test_a_replay_starts_each_bucket_once_backward_has_finished_it(cpu_backend, rng):
    model, optimizer = packed_model(cpu_backend)
    step = TrainStep(model)
    assert len(make_buckets(cpu_backend, optimizer.packed(), 4 * 2000)) > 2
    for _ in range(3):  # the capture, then two replays
        ids = rng.integers(0, CONFIG.vocab_size, size=(2, CONFIG.block_size))
        reducer = RecordingReducer(cpu_backend, optimizer)
        step(ids, ids, rng, reducer)
        assert sorted(reducer.at_start) == list(range(len(reducer.buckets)))
        for index, bucket in enumerate(reducer.buckets):
            np.testing.assert_array_equal(reducer.at_start[index], bucket.view)
        model.zero_grad()
    # the replays were cut: several parts, each followed by a progress call
    assert reducer.progress_calls > 2


class FakeComm:
    size, rank, name = 2, 1, "rank 1 of 2"

    def __init__(self):
        self.aborted = None

    def abort(self, code):
        self.aborted = code


def test_an_exception_on_one_rank_prints_one_line_naming_it_and_aborts(capsys, monkeypatch):
    monkeypatch.setattr(mpi, "ABORT_GRACE_S", 0.0)
    comm = FakeComm()
    with pytest.raises(ConfigError), mpi.fail_fast(comm):
        raise ConfigError("loss is nan")
    assert capsys.readouterr().err == "Error: rank 1 of 2 failed: loss is nan\n"
    assert comm.aborted == 1
    with pytest.raises(ZeroDivisionError), mpi.fail_fast(comm):
        1 / 0  # noqa: B018 - a bug: the one line, then its traceback
    err = capsys.readouterr().err
    assert "Traceback" in err and err.startswith(
        "Error: rank 1 of 2 failed: ZeroDivisionError: division by zero\n"
    )
