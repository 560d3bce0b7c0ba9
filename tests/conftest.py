"""Shared fixtures: the `backend` fixture over cpu and opencl, a seeded rng, and hypothesis settings.

An unavailable OpenCL backend skips its tests with the reason get_backend gives; it never falls back to
the CPU. Hypothesis is derandomised so every run draws the same examples.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from femto.backend import get_backend
from femto.errors import BackendUnavailable

settings.register_profile(
    "femto",
    deadline=None,  # kernel timings vary with machine load; correctness is what is tested here
    derandomize=True,
    max_examples=40,  # the op suite stays ~10 s on the CPU backend at this size
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("femto")

_backends: dict[str, object] = {}


def _make_backend(name: str):
    if name not in _backends:
        # FEMTO_TEST_OPENCL_DEVICE=opencl:P:D runs the opencl tests on that device instead of the
        # default one (the Oclgrind run of the op tests uses it)
        spec = os.environ.get("FEMTO_TEST_OPENCL_DEVICE") if name == "opencl" else None
        try:
            _backends[name] = get_backend(spec or name)
        except BackendUnavailable as exc:
            _backends[name] = exc
    return _backends[name]


def skip_unavailable(name: str, exc: BackendUnavailable) -> None:
    """Skip a test whose backend cannot run here, or fail it where FEMTO_REQUIRE_OPENCL=1 (.ci/run):
    there PoCL comes with the test extras, so a missing device is a broken install, not a reason to
    skip every OpenCL test and pass."""
    if os.environ.get("FEMTO_REQUIRE_OPENCL") == "1":
        pytest.fail(f"{name} backend unavailable with FEMTO_REQUIRE_OPENCL=1: {exc}")
    pytest.skip(f"{name} backend unavailable: {exc}")


@pytest.fixture(scope="session", params=["cpu", "opencl"])
def backend(request):
    made = _make_backend(request.param)
    if isinstance(made, BackendUnavailable):
        skip_unavailable(request.param, made)
    return made


@pytest.fixture(scope="session")
def cpu_backend():
    return _make_backend("cpu")


@pytest.fixture
def rng(request) -> np.random.Generator:
    """Seeded from the test's id (crc32, since str hash() changes per process): a failure
    reproduces when the test runs alone and in the full suite."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
