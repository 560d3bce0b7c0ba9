"""Write failures: a file size limit (RLIMIT_FSIZE, EFBIG) in a real child process, and os.write
failing with ENOSPC or EIO at each of the first calls of a resumed run's writes. Each ends in one
line naming the file and the cause, leaves no partial file, keeps the previous checkpoint loadable,
and metrics.jsonl ends in a whole line. Short writes are resumed, not lost."""

from __future__ import annotations

import errno
import json
import os
import resource

import numpy as np
import pytest
from helpers_a import (
    TINY,
    assert_run_whole,
    checkpoint_bytes,
    copy_run,
    femto_child,
    invoke,
    make_workdir,
    one_line,
    train_run,
)

from femto import checkpoint as ckpt
from femto import fileio
from femto.errors import WriteFailed


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("writes")
    corpus, env = make_workdir(root)
    return corpus, env, train_run(root / "good", corpus, env, steps=2)


def resume_args(corpus, run, steps=4):
    return ["train", "--data", corpus, "--out", run, *TINY, "--steps", steps, "--save-every", "1"]


def test_file_size_limit_is_one_line_and_keeps_the_checkpoint(work, tmp_path):
    corpus, env, good = work
    run = copy_run(good, tmp_path / "run")
    before = checkpoint_bytes(run)
    limit = len(before[ckpt.MODEL_FILE]) // 2  # metrics and config fit; the weights do not

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    child = femto_child(resume_args(corpus, run), env, preexec_fn=limit_file_size)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 1
    # the resume's --steps prints a notice on the schedule first (issue 13); the error is one line
    line = one_line("".join(l for l in err.splitlines(True) if not l.startswith("notice: ")))
    assert line.startswith("Error: the checkpoint of step 3 was not saved: cannot write ")
    assert f"{run / ckpt.MODEL_FILE}: File too large (EFBIG)" in line and "ulimit -f" in line
    assert checkpoint_bytes(run) == before
    assert_run_whole(run)


class FailingWrite:
    """os.write that fails with `code` at call number `n` (1-based), writing half its bytes the call
    before (a disk filling up mid-file)."""

    def __init__(self, n: int, code: int):
        self.n, self.code, self.calls, self.real = n, code, 0, os.write

    def __call__(self, fd, data):
        self.calls += 1
        if self.calls == self.n:
            raise OSError(self.code, os.strerror(self.code))
        if self.calls == self.n - 1:
            return self.real(fd, memoryview(data)[: max(1, len(data) // 2)])
        return self.real(fd, data)


# a resumed 2-step run makes about 110 os.write calls: the first are metrics and tokenizer files,
# then each save writes the model (6 to ~30), the optimizer (~30 to ~55), config.json, the journal
CALLS = [*range(1, 13), 20, 30, 40, 50, *range(53, 61), 80, 108]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("n", CALLS)
def test_os_write_failing_at_call_n(work, tmp_path, monkeypatch, n, code):
    corpus, env, good = work
    run = copy_run(good, tmp_path / "run")
    before = checkpoint_bytes(run)
    failing = FailingWrite(n, code)
    monkeypatch.setattr(os, "write", failing)
    result = invoke(resume_args(corpus, run), env)
    monkeypatch.undo()
    if failing.calls < n:  # the run needed fewer writes than n: it finished
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: ") and f"({errno.errorcode[code]})" in line, line
    assert f"cannot write {run}" in line, line  # the file is named
    assert ".pending" not in line and ".tmp" not in line, line  # by the name the user knows
    state = assert_run_whole(run)
    if state.step == 2:
        assert checkpoint_bytes(run) == before


def test_short_writes_are_resumed(work, tmp_path, monkeypatch):
    corpus, env, good = work
    run = copy_run(good, tmp_path / "run")
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, memoryview(data)[:7]))
    result = invoke(resume_args(corpus, run), env)
    monkeypatch.undo()
    assert result.exit_code == 0, result.output
    assert assert_run_whole(run).step == 4


def test_metrics_line_cut_back_when_the_disk_fills(tmp_path, monkeypatch):
    ckpt.append_metrics(tmp_path, {"step": 1, "loss": 2.5})
    monkeypatch.setattr(os, "write", FailingWrite(2, errno.ENOSPC))
    with pytest.raises(WriteFailed, match=r"metrics.jsonl: No space left on device \(ENOSPC\)"):
        ckpt.append_metrics(tmp_path, {"step": 2, "loss": 2.4})
    monkeypatch.undo()
    assert (tmp_path / ckpt.METRICS_FILE).read_bytes() == b'{"step":1,"loss":2.5}\n'
    assert [r["step"] for r in ckpt.read_metrics(tmp_path)] == [1]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=["EROFS", "EACCES"])
def test_unwritable_run_directory(work, tmp_path, monkeypatch, code):
    # a read-only filesystem or a directory without permission, simulated at os.open (the tests
    # may run as root, whom chmod does not stop)
    corpus, env, good = work
    run = copy_run(good, tmp_path / "run")
    before = checkpoint_bytes(run)
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(run)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    result = invoke(resume_args(corpus, run), env)
    monkeypatch.undo()
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"({errno.errorcode[code]})" in lines[0], result.output
    assert f"cannot write {run}" in lines[0]
    assert checkpoint_bytes(run) == before


def test_write_atomic_failure_removes_its_temporary(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    monkeypatch.setattr(os, "write", FailingWrite(1, errno.EIO))
    with pytest.raises(WriteFailed, match=rf"cannot write {target}: .* \(EIO\)"):
        fileio.write_atomic(target, np.arange(10, dtype=np.uint8).tobytes())
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]
    assert target.read_bytes() == b"old"


def test_metrics_records_stay_json(work, tmp_path):
    corpus, env, good = work
    run = copy_run(good, tmp_path / "run")
    assert invoke(resume_args(corpus, run), env).exit_code == 0
    for line in (run / ckpt.METRICS_FILE).read_text().splitlines():
        assert isinstance(json.loads(line)["step"], int)


def test_unwritable_cache_directory(work, tmp_path, monkeypatch):
    # FEMTO_CACHE_DIR on a read-only filesystem: the token cache cannot be written
    corpus, _, _ = work
    cache = tmp_path / "cache"
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(cache)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    run = tmp_path / "run"
    result = invoke(["train", "--data", corpus, "--out", run, *TINY, "--steps", 2],
                    {"FEMTO_CACHE_DIR": str(cache)})  # fmt: skip
    monkeypatch.undo()
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"cannot write {cache}" in lines[0] and "(EROFS)" in lines[0], lines
    assert not run.exists()  # the run directory the lock made is gone again
