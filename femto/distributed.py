"""Data-parallel communication: one process (no MPI at all) or many through mpi4py.

`world_size(environ)` reads the launcher's variables, so a run that is not under `mpiexec -n N>1`
never imports mpi4py; `connect` builds the communicator. `GradientReducer` sums the optimizer's
packed gradient buffers across ranks, bucket by bucket, with non-blocking Iallreduce calls that
backward can start early (see TrainStep). Nothing here knows about models, runs or files.
"""

from __future__ import annotations

import os
import socket
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from femto.backend.base import Backend, get_backend, parse_device_spec
from femto.errors import BackendUnavailable, ConfigError, FemtoError

# the world size as launchers publish it: MPICH's hydra (and Slurm's PMI), Open MPI, MVAPICH
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
INSTALL_HINT = 'pip install "femto[mpi]" (mpi4py and MPICH)'
# a bucket is cut once it holds this many bytes of gradient; smaller buckets start reducing sooner
# but each all-reduce pays a latency (PyTorch DDP's default is 25 MB, for much larger models)
BUCKET_BYTES = 1 << 20
# while one rank works alone (rank 0 encoding a corpus, saving, sampling) the others wait by polling
# at this interval: a blocking MPI wait spins and would take a core from the rank doing the work
IDLE_POLL_S = 0.005
HOST_BYTES = 256  # 'pid@host' of a rank, as gathered


class PeerFailed(FemtoError):
    """Another rank failed and reported why; this one stops without repeating it."""


class RanksDiverged(FemtoError):
    """The ranks' parameters are no longer identical."""


def world_size(environ: Mapping[str, str]) -> int:
    """The number of processes the launcher started (1 when not launched by mpiexec)."""
    for name in SIZE_VARIABLES:
        value = environ.get(name)
        if value is not None:
            try:
                size = int(value)
            except ValueError:
                raise ConfigError(f"{name}={value!r} is not a process count") from None
            return max(size, 1)
    return 1


def connect(environ: Mapping[str, str], cpu_threads: int | None = None) -> Communicator:
    """The communicator of this process: SingleProcess when the launcher started one process (mpi4py
    is then never imported), else MPI's world. `cpu_threads` is the CPU backend's thread count per
    rank (None: OpenMP's own choice, OMP_NUM_THREADS)."""
    size = world_size(environ)
    if size == 1:
        return SingleProcess(cpu_threads)
    try:
        from mpi4py import MPI
    except ImportError:
        if any(environ.get(name, "0") != "0" for name in RANK_VARIABLES):
            raise PeerFailed("mpi4py is missing (rank 0 says so)") from None
        raise BackendUnavailable(
            f"this run was launched as {size} processes but mpi4py is not installed: {INSTALL_HINT}"
        ) from None
    return MPICommunicator(MPI, MPI.COMM_WORLD, cpu_threads)


def checksum(arrays: Sequence[np.ndarray]) -> int:
    """CRC-32 of the arrays' bytes in order: equal on two ranks only if their parameters are."""
    value = 0
    for array in arrays:
        value = zlib.crc32(np.ascontiguousarray(array).view(np.uint8), value)
    return value


def _host(backend: Backend, buf: Any) -> tuple[np.ndarray, bool]:
    """(host array for `buf`, True if it is `buf` itself): the CPU backend's buffers are numpy
    arrays and are reduced in place; a device buffer goes through a host copy."""
    if isinstance(buf, np.ndarray):
        return buf, True
    return backend.to_numpy(buf), False


class Communicator:
    """What a data-parallel training loop needs from its processes. The base class is the
    one-process world: every collective is the identity."""

    rank = 0
    size = 1
    local_rank = 0  # rank among the processes on this host
    local_size = 1

    def __init__(self, cpu_threads: int | None = None):
        self.cpu_threads = cpu_threads

    @property
    def name(self) -> str:
        return f"rank {self.rank} of {self.size}"

    def barrier(self) -> None:
        pass

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        """The element-wise sum over ranks of a small float64 array (a new array)."""
        return np.array(values, dtype=np.float64)

    def bcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's bytes on every rank (the others pass None)."""
        assert data is not None
        return data

    def bcast_arrays(self, arrays: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """Rank 0's float32 arrays on every rank (the others pass None); names and shapes travel."""
        assert arrays is not None
        return arrays

    def gather_ints(self, value: int) -> list[int]:
        return [value]

    def processes(self) -> list[str]:
        """'pid@host' of every rank, in rank order: a launcher that reports a dead process by its
        pid (MPICH's "BAD TERMINATION ... PID 1234 RUNNING AT host") is read against it."""
        return [f"{os.getpid()}@{socket.gethostname()}"]

    def check_identical(self, arrays: Sequence[np.ndarray], when: str) -> None:
        """Raise RanksDiverged on every rank unless the arrays are byte-identical on all ranks."""
        sums = self.gather_ints(checksum(arrays))
        differ = [r for r, value in enumerate(sums) if value != sums[0]]
        if differ:
            raise RanksDiverged(
                f"the parameters differ across ranks {when}: CRC-32 {sums[0]:08x} on rank 0, "
                f"{sums[differ[0]]:08x} on rank {differ[0]} ({len(differ)} of {self.size} ranks "
                "differ); every host must run the same femto build on the same kind of device"
            )

    def gradient_reducer(
        self, backend: Backend, packed: list[dict], overlap: bool = True
    ) -> GradientReducer | None:
        """A reducer of the packed gradient buffers; one process has nothing to reduce (None)."""
        if self.size == 1:
            return None
        return GradientReducer(self, backend, packed, overlap=overlap)

    def backend(self, spec: str) -> Backend:
        """This rank's backend for a --device spec: with several ranks on a host, `opencl` (no
        :P:D) becomes the GPU numbered local_rank modulo the GPUs this host has."""
        name, rest = parse_device_spec(spec)
        options: dict[str, Any] = {}
        if name == "cpu" and self.cpu_threads is not None:
            options["num_threads"] = self.cpu_threads
        if name == "opencl" and not rest and self.local_size > 1:
            spec = _local_gpu(self.local_rank)
        return get_backend(spec, **options)

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)


class SingleProcess(Communicator):
    """One process: no MPI, every collective the identity."""


def _local_gpu(local_rank: int) -> str:
    """'opencl:P:D' of device number local_rank modulo this host's devices of the kind plain
    --device opencl prefers: its GPUs, else its CPU drivers (never a simulator beside them)."""
    from femto.backend.opencl import default_device, list_devices

    devices = list_devices()
    best = default_device(devices)
    if best is None:
        raise BackendUnavailable("--device opencl: no OpenCL device on this host")
    gpus = [d for d in devices if d["type"] == best["type"]]
    chosen = gpus[local_rank % len(gpus)]
    return f"opencl:{chosen['platform']}:{chosen['device']}"


class MPICommunicator(Communicator):
    """MPI_COMM_WORLD through mpi4py, with a per-host communicator for local ranks."""

    def __init__(self, mpi: Any, comm: Any, cpu_threads: int | None = None):
        super().__init__(cpu_threads)
        self.MPI, self.comm = mpi, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.local = comm.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = self.local.Get_rank(), self.local.Get_size()

    def _idle_wait(self, request: Any) -> None:
        while not request.Test():
            time.sleep(IDLE_POLL_S)

    def barrier(self) -> None:
        self._idle_wait(self.comm.Ibarrier())

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        out = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, out, op=self.MPI.SUM)
        return out

    def bcast_bytes(self, data: bytes | None) -> bytes:
        # the other ranks may wait here a long time (rank 0 preparing the run): poll, don't spin
        length = np.array([len(data) if self.rank == 0 else 0], dtype=np.int64)
        self._idle_wait(self.comm.Ibcast(length, root=0))
        buf = (
            np.frombuffer(data, dtype=np.uint8).copy()
            if self.rank == 0
            else np.empty(int(length[0]), dtype=np.uint8)
        )
        self.comm.Bcast(buf, root=0)
        return buf.tobytes()

    def bcast_arrays(self, arrays: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        import json

        shapes = None
        if self.rank == 0:
            shapes = {name: list(a.shape) for name, a in arrays.items()}
        shapes = json.loads(self.bcast_bytes(json.dumps(shapes).encode() if shapes else None))
        out = {}
        for name, shape in shapes.items():
            buf = (
                np.ascontiguousarray(arrays[name], dtype=np.float32)
                if self.rank == 0
                else np.empty(shape, dtype=np.float32)
            )
            self.comm.Bcast(buf, root=0)
            out[name] = buf
        return out

    def gather_ints(self, value: int) -> list[int]:
        out = np.empty(self.size, dtype=np.int64)
        self.comm.Allgather(np.array([value], dtype=np.int64), out)
        return [int(v) for v in out]

    def processes(self) -> list[str]:
        mine = np.zeros(HOST_BYTES, dtype=np.uint8)
        name = f"{os.getpid()}@{socket.gethostname()}".encode()[:HOST_BYTES]
        mine[: len(name)] = np.frombuffer(name, dtype=np.uint8)
        everyone = np.empty((self.size, HOST_BYTES), dtype=np.uint8)
        self.comm.Allgather(mine, everyone)
        return [row.tobytes().rstrip(b"\0").decode(errors="replace") for row in everyone]

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


@dataclass
class Bucket:
    """A slice of one packed gradient buffer: the parameters `names`, elements [start, stop)."""

    names: list[str]
    view: Any
    size: int


def make_buckets(backend: Backend, packed: list[dict], bucket_bytes: int) -> list[Bucket]:
    """Cut each packed gradient buffer into slices of about bucket_bytes at parameter boundaries,
    from its last parameter back: backward finishes the last layers' gradients first."""
    buckets = []
    limit = max(bucket_bytes // 4, 1)
    for group in packed:
        offsets = sorted(group["offsets"].items(), key=lambda item: item[1])
        stop = group["size"]
        names: list[str] = []
        for name, offset in reversed(offsets):
            names.append(name)
            if stop - offset >= limit or offset == 0:
                buckets.append(
                    Bucket(names, backend.view(group["grad"], offset, stop - offset), stop - offset)
                )
                names, stop = [], offset
    return buckets


class GradientReducer:
    """Sums the packed gradient buffers over ranks, in buckets.

    overlap=True: `start(i)` posts bucket i's Iallreduce as soon as backward has finished it, and
    `progress()` lets MPI move pending ones along between kernel launches; `finish()` waits for all.
    overlap=False: nothing happens until `finish()`, which runs one blocking Allreduce per packed
    buffer, the baseline the benchmark compares against. `exposed_s` adds up the time the step spent
    waiting in finish() (what the all-reduce costs the step), `nbytes` the bytes reduced per step.
    """

    def __init__(
        self,
        comm: MPICommunicator,
        backend: Backend,
        packed: list[dict],
        overlap: bool = True,
        bucket_bytes: int = BUCKET_BYTES,
    ):
        self.comm, self.backend, self.overlap = comm, backend, overlap
        self.buckets = make_buckets(backend, packed, bucket_bytes)
        self._whole = [(g["grad"], g["size"]) for g in packed]
        self.nbytes = 4 * sum(size for _, size in self._whole)
        self._pending: dict[int, tuple[Any, np.ndarray, bool]] = {}
        self.exposed_s = 0.0

    def start(self, index: int) -> None:
        if not self.overlap or index in self._pending:
            return
        MPI = self.comm.MPI
        bucket = self.buckets[index]
        host, in_place = _host(self.backend, bucket.view)
        request = self.comm.comm.Iallreduce(MPI.IN_PLACE, host, op=MPI.SUM)
        self._pending[index] = (request, host, in_place)

    def start_all(self) -> None:
        for index in range(len(self.buckets)):
            self.start(index)

    def progress(self) -> None:
        """Give MPI a chance to advance pending reductions (MPICH progresses only inside MPI calls)."""
        if self._pending:
            self.comm.MPI.Request.Testall([request for request, _, _ in self._pending.values()])

    def finish(self) -> None:
        """Every gradient buffer holds the sum over ranks when this returns."""
        t0 = time.perf_counter()
        MPI = self.comm.MPI
        if self.overlap:
            self.start_all()  # any bucket a graph run did not start
            MPI.Request.Waitall([request for request, _, _ in self._pending.values()])
            for index, (_, host, in_place) in self._pending.items():
                if not in_place:
                    self.backend.upload_(self.buckets[index].view, host)
            self._pending.clear()
        else:
            self.backend.synchronize()
            for buf, _ in self._whole:
                host, in_place = _host(self.backend, buf)
                self.comm.comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
                if not in_place:
                    self.backend.upload_(buf, host)
        self.exposed_s += time.perf_counter() - t0
