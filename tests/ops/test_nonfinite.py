"""nonfinite (the divergence guard's test): every backend against the float64 reference, for NaN,
+-inf and the largest finite floats at every position, tails included; several inputs share one
flag; it has no gradient; bad inputs raise ShapeError. Exact: the flag is 0.0 or 1.0."""

import numpy as np
import pytest
import reference as ref
from hypothesis import given
from hypothesis import strategies as st

from femto.errors import ShapeError
from femto.graph import Tensor
from femto.ops import nonfinite

SPECIAL = [np.nan, np.inf, -np.inf]
EDGE = [np.finfo(np.float32).max, -np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1e-45, 0.0]


def flag(backend, *arrays) -> float:
    tensors = [Tensor.from_numpy(np.asarray(a, np.float32), backend) for a in arrays]
    return float(nonfinite(*tensors).numpy()[0])


def test_reference_known_values():
    assert ref.nonfinite_forward(np.ones(3)) == 0.0
    assert ref.nonfinite_forward(np.ones(3), np.array([np.nan])) == 1.0
    assert ref.nonfinite_forward(np.array([np.finfo(np.float32).max], np.float32)) == 0.0


@given(
    n=st.sampled_from([1, 3, 7, 17, 63, 64, 65, 1000, 40_000]),
    where=st.floats(0, 1, exclude_max=True),
    special=st.sampled_from([None, *SPECIAL]),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(backend, n, where, special, seed):
    x = (np.random.default_rng(seed).standard_normal(n) * 1e30).astype(np.float32)
    if special is not None:
        x[int(where * n)] = special
    assert flag(backend, x) == ref.nonfinite_forward(x.astype(np.float64))[0]


@pytest.mark.parametrize("value", SPECIAL)
@pytest.mark.parametrize("position", [0, 1, 31, 32, 33, 32767, 32768, 99_999])
def test_finds_one_value_anywhere(backend, value, position):
    # positions across vector widths, OpenMP's parallel threshold and the last element
    x = np.zeros(100_000, np.float32)
    x[position] = value
    assert flag(backend, x) == 1.0


def test_extreme_finite_values_pass(backend):
    assert flag(backend, np.array(EDGE * 50, np.float32)) == 0.0


def test_one_flag_for_several_inputs(backend, rng):
    clean = [rng.standard_normal(s).astype(np.float32) for s in ((3, 5), (17,), (1,))]
    assert flag(backend, *clean) == 0.0
    dirty = [c.copy() for c in clean]
    dirty[2][0] = np.inf
    assert flag(backend, *dirty) == ref.nonfinite_forward(*dirty)[0] == 1.0


def test_kernel_sets_and_never_clears(backend):
    # the contract the guard relies on: a flag already set stays set after a clean buffer
    f = backend.from_numpy(np.ones(1, np.float32))
    backend.run("nonfinite_forward", f, backend.from_numpy(np.zeros(9, np.float32)), N=9)
    assert backend.to_numpy(f)[0] == 1.0


def test_has_no_gradient(backend):
    x = Tensor.from_numpy(np.ones((2, 3), np.float32), backend, requires_grad=True)
    out = nonfinite(x)
    assert out.op.backward(out) == (None,)


def test_bad_inputs(backend):
    with pytest.raises(ShapeError, match="none"):
        nonfinite()
    with pytest.raises(ShapeError, match=r"int32 of shape \(3,\)"):
        nonfinite(Tensor.from_numpy(np.arange(3, dtype=np.int32), backend))
