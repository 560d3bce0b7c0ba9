"""Data-parallel runs under mpiexec: the communicator, and ending every rank when one fails."""

from __future__ import annotations

import contextlib
import os
import sys
import time

import click

from femto.errors import FemtoError


def communicator():
    """This process's communicator: MPI's world under `mpiexec -n N>1` (mpi4py imported only
    then), else one process. Without OMP_NUM_THREADS, ranks on one host share its cores."""
    from femto import distributed

    comm = distributed.connect(os.environ)
    if comm.size > 1 and "OMP_NUM_THREADS" not in os.environ:
        comm.cpu_threads = max(1, len(os.sched_getaffinity(0)) // comm.local_size)
    return comm


# time for mpiexec to forward a failing rank's last output before MPI_Abort ends the job
ABORT_GRACE_S = 0.5


@contextlib.contextmanager
def fail_fast(comm):
    """With several ranks, an exception on one must end them all: the others would wait for it in
    their next collective forever. It prints one line naming the rank, then MPI_Abort ends the job."""
    if comm.size == 1:
        yield
        return
    try:
        yield
    except BaseException as exc:
        bug = not isinstance(exc, (FemtoError, KeyboardInterrupt))
        if isinstance(exc, FemtoError):
            what = str(exc)
        elif isinstance(exc, KeyboardInterrupt):
            what = "interrupted twice: stopping now, the last checkpoint stays"
        else:
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # the line first: MPI_Abort may end the job before mpiexec has forwarded all of the output
        click.echo(f"Error: {comm.name} failed: {what}", err=True)
        if bug:
            import traceback

            traceback.print_exc()  # a bug keeps its traceback
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        comm.abort(1)
        raise
