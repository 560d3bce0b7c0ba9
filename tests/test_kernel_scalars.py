"""run()'s keyword scalars bind to the kernel's parameter names (csrc/femto.h), whatever their
order: a swapped C and N must not silently swap the sizes on the CPU."""

import numpy as np
import pytest

from femto.backend.cpu import KERNEL_SCALARS, CPUBackend


def test_every_kernel_has_its_scalar_names():
    assert KERNEL_SCALARS["matmul_forward"] == ("N", "C", "OC")
    assert KERNEL_SCALARS["add_forward"] == ("N", "M")


def test_scalars_in_any_keyword_order_give_the_same_result():
    be = CPUBackend()
    rng = np.random.default_rng(0)
    N, C, OC = 3, 5, 7
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in (N * C, OC * C, OC))
    want = (x.reshape(N, C) @ w.reshape(OC, C).T + b).reshape(-1)
    orders = ({"N": N, "C": C, "OC": OC}, {"OC": OC, "C": C, "N": N}, {"C": C, "OC": OC, "N": N})
    for order in orders:
        out = np.zeros(N * OC, np.float32)
        be.run("matmul_forward", out, x, w, b, **order)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "scalars",
    [{"N": 4}, {"N": 4, "M": 4, "K": 1}, {"N": 4, "m": 4}],
    ids=["missing", "extra", "typo"],
)
def test_scalars_that_do_not_match_the_parameters_are_refused(scalars):
    be = CPUBackend()
    out, ones = np.zeros(4, np.float32), np.ones(4, np.float32)
    wanted = r"add_forward: scalars .* parameters N, M \(csrc/femto.h\)"
    with pytest.raises(TypeError, match=wanted):
        be.run("add_forward", out, ones, ones, **scalars)
    assert not out.any()  # refused before the kernel ran
