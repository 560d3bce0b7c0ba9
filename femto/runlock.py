"""OS file locks on a run directory: one trainer per directory, readers that never see half a save.

Two flock(2) locks, which the kernel drops when their process ends however it ends (exit, exception,
kill -9): `.train.lock`, a file holding the pid of the `femto train` that locks it exclusively for
its whole life (removed when it ends cleanly), and the run directory itself, locked exclusively while a
checkpoint commit renames files and shared by readers while they read config.json, the tokenizer and
the weights (a directory can be locked read-only, so readers create nothing). Stdlib only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
from collections.abc import Iterator

from femto.errors import ConfigError
from femto.fileio import write_failed

TRAIN_LOCK = ".train.lock"


class TrainerLock:
    """The exclusive lock of one trainer on `run_dir`, taken on creation and released by
    release() or by the process's end. The lock file holds the holder's pid, for the message a
    second one gets."""

    def __init__(self, run_dir: pathlib.Path):
        self.run_dir = pathlib.Path(run_dir)
        self.created_dir = not self.run_dir.exists()
        self.path = self.run_dir / TRAIN_LOCK
        self.fd: int | None = None
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"--out {self.run_dir} is a file, not a run directory")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_failed(exc.filename or self.run_dir, exc) from None
        # the holder unlinks the file as it ends: a lock won on a file that is no longer at `path`
        # is worthless (a third process could create a new one and lock that), so try again
        while self.fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise write_failed(self.path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise ConfigError(f"cannot lock {self.path}: {exc.strerror}") from None
                who = f"pid {holder}" if holder else "another process"
                raise ConfigError(
                    f"{self.run_dir} is in use by another `femto train` ({who}): wait for it to "
                    "end, stop it, or pick another --out"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
            else:
                os.close(fd)
        # the pid is information for the next comer, not the lock itself: a failed write is harmless
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self, remove_dir_if_empty: bool = False) -> None:
        """Drop the lock and its file. With remove_dir_if_empty, a run directory this lock created
        and that holds nothing else goes too: a trainer that failed before writing leaves no
        trace."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still locked: see the loop in __init__
        if remove_dir_if_empty and self.created_dir:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # fails, harmlessly, if anything else is inside
        os.close(self.fd)
        self.fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def checkpoint_lock(run_dir: pathlib.Path, exclusive: bool) -> Iterator[None]:
    """Lock the directory `run_dir`: exclusive for a writer committing a checkpoint, shared for a
    reader loading one. A reader of a directory that does not exist (yet) has nothing to wait for:
    the load that follows reports what is missing."""
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
