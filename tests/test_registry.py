"""The kernel registry: every Op's kernels exist on every backend, the CPU extension exposes exactly the
kernels csrc/femto.h declares, and every backend offers the same kernel set as the CPU one."""

from __future__ import annotations

import pathlib
import re

import pytest

from femto.backend.cpu import CPUBackend
from femto.ops import ALL_OPS

HEADER = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "femto.h"
# kernels without an Op: the optimizer's (femto/optim.py) and generation's cached attention
EXTRA_KERNELS = {"adamw_update", "sum_squares", "attention_cached_forward"}


def declared_kernels() -> set[str]:
    names = set(re.findall(r"^void\s+(\w+)\s*\(", HEADER.read_text(), re.MULTILINE))
    return {
        n for n in names if not n.startswith("femto_")
    }  # femto_* are runtime helpers, not kernels


@pytest.mark.parametrize("op", ALL_OPS, ids=lambda op: op.__name__)
def test_op_kernels_exist(backend, op):
    assert op.kernels, f"{op.__name__} declares no kernels"
    missing = set(op.kernels) - backend.kernel_names()
    assert not missing, f"{backend.name} lacks {sorted(missing)} needed by {op.__name__}"


def test_extra_kernels_exist(backend):
    assert EXTRA_KERNELS <= backend.kernel_names()


def test_op_kernels_follow_the_naming_rule():
    """<stem>_forward / <stem>_backward, the stem being the op's file (csrc/<stem>.c, kernels/<stem>.cl)."""
    for op in ALL_OPS:
        stem = op.__module__.rsplit(".", 1)[1]
        for kernel in op.kernels:
            assert kernel.startswith(f"{stem}_"), (
                f"{op.__name__}: {kernel} is not in {stem}'s files"
            )
            assert kernel.endswith(("_forward", "_backward")), f"{op.__name__}: {kernel}"


def test_cpu_exposes_exactly_the_header():
    assert CPUBackend().kernel_names() == declared_kernels()


def test_every_backend_has_the_cpu_kernel_set(backend):
    assert backend.kernel_names() == CPUBackend().kernel_names()
