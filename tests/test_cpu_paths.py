"""CPU paths: the extension holds the kernels once per instruction set and picks one when it loads.

Every path this machine's CPU supports passes the op tests (the one in use by this run's; the others in
a subprocess with FEMTO_CPU set), and a FEMTO_CPU that cannot be honoured is a one-line error.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import sysconfig

import pytest

from femto.backend import cpu
from femto.errors import BackendUnavailable

ROOT = cpu.pathlib.Path(__file__).resolve().parents[1]


def run_femto(args: list[str], femto_cpu: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FEMTO_CPU"}
    if femto_cpu is not None:
        env["FEMTO_CPU"] = femto_cpu
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )


def test_the_build_holds_every_x86_path_where_gcc_compiles_them():
    assert cpu.BUILT_PATHS[0] == "baseline" and set(cpu.BUILT_PATHS) <= set(cpu.KNOWN_PATHS)
    gcc = "clang" not in (os.environ.get("CC") or sysconfig.get_config_var("CC") or "")
    if platform.machine() in ("x86_64", "AMD64") and gcc:
        assert cpu.BUILT_PATHS == cpu.KNOWN_PATHS
    assert "baseline" in cpu.SUPPORTED_PATHS


@pytest.mark.skipif("FEMTO_CPU" in os.environ, reason="this run forces a path")
def test_the_fastest_supported_path_runs_by_default():
    assert cpu.cpu_path() == cpu.SUPPORTED_PATHS[-1]
    assert f"{cpu.cpu_path()} path" in cpu.CPUBackend().device_name


@pytest.mark.parametrize("path", [p for p in cpu.SUPPORTED_PATHS if p != cpu.cpu_path()])
def test_op_tests_pass_on_every_other_supported_path(path):
    result = run_femto(
        ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/ops", "tests/test_threads.py"],
        femto_cpu=path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout.splitlines()[-1]


@pytest.mark.parametrize("path", cpu.SUPPORTED_PATHS)
def test_femto_cpu_forces_the_path_and_version_says_so(path):
    result = run_femto(["-m", "femto", "--version"], femto_cpu=path)
    assert result.returncode == 0, result.stderr
    assert f"kernels: {path} (" in result.stdout


@pytest.mark.parametrize(
    ("value", "message"),
    [("avx3", "FEMTO_CPU='avx3' is not a CPU path: use one of baseline"), ("AVX2", "'AVX2'")],
)
@pytest.mark.parametrize("command", [["--version"], ["devices"], ["train", "--steps", "1"]])
def test_an_unknown_femto_cpu_is_a_one_line_error(value, message, command, tmp_path):
    out = ["--out", str(tmp_path / "run")] if command[0] == "train" else []
    result = run_femto(["-m", "femto", *command, *out], femto_cpu=value)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # nothing written


def test_an_unusable_femto_cpu_refuses_the_backend_in_python():
    code = "from femto.backend.cpu import CPUBackend\nCPUBackend()"
    result = run_femto(["-c", code], femto_cpu="sse9")
    assert result.returncode != 0
    assert "BackendUnavailable" in result.stderr and "FEMTO_CPU='sse9'" in result.stderr


def test_a_path_this_cpu_lacks_names_what_it_lacks(monkeypatch):
    """The message for a built path the CPU cannot run (no machine at hand lacks one, so the status
    the extension would report is substituted)."""
    missing = [p for p in cpu.KNOWN_PATHS if p not in cpu.SUPPORTED_PATHS]
    wanted = missing[0] if missing else "avx512"

    class Lib:
        femto_cpu_request_status = staticmethod(lambda: 2)
        femto_cpu_requested = staticmethod(lambda: cpu._cpu.ffi.new("char[]", wanted.encode()))

    class Ext:
        lib, ffi = Lib, cpu._cpu.ffi

    monkeypatch.setattr(cpu, "_cpu", Ext)
    error = cpu.cpu_path_error()
    assert error.startswith(f"FEMTO_CPU={wanted}: this CPU (")
    assert cpu.PATH_FEATURES[wanted] in error and "unset FEMTO_CPU" in error
    with pytest.raises(BackendUnavailable, match=f"FEMTO_CPU={wanted}"):
        cpu.CPUBackend()
