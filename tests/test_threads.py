"""Every CPU kernel, forward and backward, at 1 and at 2 OpenMP threads: the results are compared bit
for bit. All kernels split work by owner (each output element is summed by exactly one thread, in a
fixed order), and the reductions (crossentropy's mean, sum_squares) sum fixed chunks in a fixed order,
so every result here is asserted bit-identical; none differs by float reordering.

A kernel runs serially below its parallel threshold (an OpenMP `if` clause), where 1 and 2 threads
agree trivially. So every shape here is derived from the thresholds, read from the C sources at
test time (FEMTO_PARALLEL_MIN, matmul's SERIAL_MACS, and the constants that pick a kernel's code
path), and test_every_case_is_above_its_parallel_threshold checks each kernel's work measure, as its
`if` clause computes it, against them."""

from __future__ import annotations

import math
import pathlib
import re

import numpy as np
import pytest
from gradcheck import run_op

from femto.backend.cpu import CPUBackend
from femto.ops import (
    add,
    attention,
    cross_entropy,
    dropout,
    embedding,
    gelu,
    layernorm,
    matmul,
    nonfinite,
)

CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"


def c_constant(name: str) -> int:
    """The integer a `#define name value` in csrc/ gives (one value, wherever it is defined)."""
    pattern = re.compile(rf"^#define {name} (\d+)\b", re.MULTILINE)
    values = {int(m.group(1)) for f in CSRC.glob("*.[ch]") for m in pattern.finditer(f.read_text())}
    found = values or "none"
    assert len(values) == 1, f"#define {name} in {CSRC}: expected one value, found {found}"
    return values.pop()


if not CSRC.is_dir():
    pytest.skip(f"the C sources ({CSRC}) are not beside the tests", allow_module_level=True)
PARALLEL_MIN = c_constant("FEMTO_PARALLEL_MIN")  # every kernel but matmul's
SERIAL_MACS = c_constant("SERIAL_MACS")  # matmul's multiply-adds below which it runs serially
GEMV_ROWS = c_constant("GEMV_ROWS")  # matmul forwards of at most this many rows use dot products
ADD_COLUMN_BLOCK = c_constant("ADD_COLUMN_BLOCK")  # add's db splits only with > 1 column block
LN_FUSED_MAX_C = c_constant("LN_FUSED_MAX_C")  # layernorm's one-pass backward up to this width
CACHED_FRESH_T_MAX = c_constant("CACHED_FRESH_T_MAX")  # cached attention's fresh-window path


def above(threshold: int, per_unit: int) -> int:
    """The smallest count of units of `per_unit` work that reaches threshold, plus an odd tail."""
    return math.ceil(threshold / per_unit) + 3


@pytest.fixture
def cpu():
    backend = CPUBackend()
    before = backend.num_threads()
    backend.set_num_threads(2)
    if backend.num_threads() != 2:
        pytest.skip("the extension was built without OpenMP (FEMTO_NO_OPENMP=1): one thread only")
    yield backend
    backend.set_num_threads(before)


def _cases(rng: np.random.Generator):
    """name -> (fn, arrays, grad_args, works): works are the (work, threshold) pairs of the kernels'
    `if` clauses that the case runs, each work as the kernel computes it from these shapes."""
    normal = rng.standard_normal
    P, S = PARALLEL_MIN, SERIAL_MACS
    C, OC = 45, 37
    N = above(S, C * OC)  # matmul's products are N*C*OC multiply-adds, forward and backward
    few, wide = 3, 300
    assert few <= GEMV_ROWS
    few_oc = above(S, few * wide)
    bias_rows = above(S, OC)  # dbias alone is column sums over N*OC elements
    ids_T = above(P, 4 * 67)
    ids = rng.integers(0, 5, (4, ids_T)).astype(np.int32)  # only 5 ids: rows repeat many times
    add_rows = above(P, 3 * 29)
    add_cols = ADD_COLUMN_BLOCK + 45  # two column blocks for db
    add_bias_rows = above(P, add_cols)
    ln_T = above(P, 4 * 33)
    ln_wide = LN_FUSED_MAX_C + 88  # the unfused backward, split over rows then column blocks
    ln_wide_rows = above(P, ln_wide)
    B, NH, HS = 2, 3, 12
    att_T = math.isqrt(P // (B * NH * HS)) + 2  # attention's work is B*NH*T*T*HS
    elems = above(P, 9)
    ce_T, V = above(P, 4 * 31), 31
    targets = rng.integers(0, V, (4, ce_T)).astype(np.int32)
    late_inf = normal(elems * 9)
    late_inf[-5] = np.inf  # in the second thread's half
    macs = [(N * C * OC, S)]
    return {
        "matmul": (matmul, [normal((N, C)), normal((OC, C)), normal(OC)], (0, 1, 2), macs),
        "matmul_no_bias": (matmul, [normal((N, C)), normal((OC, C)), None], (0, 1), macs),
        "matmul_dbias_only": (
            matmul, [normal((bias_rows, 9)), normal((OC, 9)), normal(OC)], (2,),
            [(bias_rows * 9 * OC, S), (bias_rows * OC, S)],
        ),
        # three rows: the forward's dot-product path, split over output blocks
        "matmul_few_rows": (
            matmul, [normal((few, wide)), normal((few_oc, wide)), normal(few_oc)], (0, 1, 2),
            [(few * wide * few_oc, S)],
        ),
        "embedding": (embedding, [ids, normal((5, 67))], (1,), [(ids.size * 67, P)]),
        "add_residual": (
            add, [normal((add_rows, 87)), normal((add_rows, 87))], (0, 1), [(add_rows * 87, P)]
        ),
        "add": (
            add, [normal((3, add_rows, 29)), normal((add_rows, 29))], (0, 1),
            [(3 * add_rows * 29, P)],
        ),
        "add_bias": (
            add, [normal((add_bias_rows, add_cols)), normal(add_cols)], (0, 1),
            [(add_bias_rows * add_cols, P)],
        ),
        "layernorm": (
            layernorm, [normal((4, ln_T, 33)), normal(33), normal(33)], (0, 1, 2),
            [(4 * ln_T * 33, P)],
        ),
        "layernorm_wide": (
            layernorm, [normal((ln_wide_rows, ln_wide)), normal(ln_wide), normal(ln_wide)],
            (0, 1, 2),
            [(ln_wide_rows * ln_wide, P)],
        ),
        "gelu": (gelu, [normal((9, elems))], (0,), [(9 * elems, P)]),
        "attention": (
            lambda t: attention(t, NH), [normal((B, att_T, 3 * NH * HS))], (0,),
            [(B * NH * att_T * att_T * HS, P)],
        ),
        "dropout": (lambda t: dropout(t, 0.3, 9), [normal((9, elems))], (0,), [(9 * elems, P)]),
        "crossentropy": (
            cross_entropy, [normal((4, ce_T, V)), targets], (0,), [(4 * ce_T * V, P)]
        ),
        "nonfinite": (nonfinite, [late_inf.reshape(9, elems)], (), [(9 * elems, P)]),
    }  # fmt: skip


CASES = list(_cases(np.random.default_rng(0)))


def test_every_case_is_above_its_parallel_threshold():
    for name, (*_, works) in _cases(np.random.default_rng(0)).items():
        for work, threshold in works:
            assert work >= threshold, f"{name}: work {work} is below the threshold {threshold}"


@pytest.mark.parametrize("name", CASES)
def test_op_is_bit_identical_at_1_and_2_threads(cpu, name):
    fn, arrays, grad_args, _ = _cases(np.random.default_rng(0))[name]
    arrays = [None if a is None else np.asarray(a) for a in arrays]
    results = {}
    for n in (1, 2):
        cpu.set_num_threads(n)
        assert cpu.num_threads() == n
        y = run_op(cpu, fn, arrays)[0]
        dout = np.random.default_rng(1).standard_normal(y.shape) if grad_args else None
        results[n] = run_op(cpu, fn, arrays, grad_args, dout)
    (out1, grads1), (out2, grads2) = results[1], results[2]
    assert out1.tobytes() == out2.tobytes(), f"{name} forward differs between 1 and 2 threads"
    for i in grad_args:
        assert grads1[i].tobytes() == grads2[i].tobytes(), f"{name} gradient of input {i} differs"


def test_optimizer_kernels_are_bit_identical_at_1_and_2_threads(cpu):
    rng = np.random.default_rng(2)
    N = PARALLEL_MIN + 1001  # adamw_update and sum_squares split at FEMTO_PARALLEL_MIN elements
    param, grad = rng.standard_normal(N).astype(np.float32), rng.standard_normal(N)
    results = {}
    for n in (1, 2):
        cpu.set_num_threads(n)
        p, m, v = cpu.from_numpy(param), cpu.zeros(param.size), cpu.zeros(param.size)
        for step in (1, 2, 3):
            cpu.run(
                "adamw_update",
                p,
                m,
                v,
                cpu.from_numpy(grad.astype(np.float32)),
                cpu.from_numpy(np.array([9.0], np.float32)),  # a squared norm that clips
                N=param.size,
                lr=1e-3,
                beta1=0.9,
                beta2=0.95,
                eps=1e-8,
                weight_decay=0.1,
                grad_clip=1.0,
                grad_divisor=1.0,
                step=step,
            )
        norm = cpu.zeros(1)
        cpu.run("sum_squares", norm, p, N=param.size)
        results[n] = (p.tobytes(), m.tobytes(), v.tobytes(), norm.tobytes())
    assert results[1] == results[2]


def test_cached_attention_is_bit_identical_at_1_and_2_threads(cpu):
    """A fresh window at position 0 (the blocked path), then more tokens after it (the online
    softmax's path), each with work B*NH*TQ*(pos+T)*HS above FEMTO_PARALLEL_MIN."""
    B, NH, HS = 2, 3, 5
    T1 = math.isqrt(PARALLEL_MIN // (B * NH * HS)) + 2
    T2 = next(t for t in range(1, T1 + 1) if B * NH * t * (T1 + t) * HS >= PARALLEL_MIN)
    assert T1 <= CACHED_FRESH_T_MAX and B * NH * T1 * T1 * HS >= PARALLEL_MIN
    TMAX, C = T1 + T2, NH * HS
    qkv = np.random.default_rng(3).standard_normal((B, TMAX, 3 * C)).astype(np.float32)
    results = {}
    for n in (1, 2):
        cpu.set_num_threads(n)
        k, v = cpu.zeros(B * NH * TMAX * HS), cpu.zeros(B * NH * TMAX * HS)
        outs = []
        for pos, T in ((0, T1), (T1, T2)):
            out = cpu.empty(B * T * C)
            cpu.run(
                "attention_cached_forward",
                out,
                k,
                v,
                cpu.from_numpy(np.ascontiguousarray(qkv[:, pos : pos + T])),
                cpu.from_numpy(np.arange(pos, pos + T, dtype=np.int32)),
                B=B,
                T=T,
                C=C,
                NH=NH,
                TMAX=TMAX,
                first=0,
            )
            outs.append(out.tobytes())
        results[n] = outs
    assert results[1] == results[2]
