"""Every CPU kernel, forward and backward, at 1 and at 2 OpenMP threads: the results are compared bit
for bit. All kernels split work by owner (each output element is summed by exactly one thread, in a
fixed order), and the reductions (crossentropy's mean, sum_squares) sum fixed chunks in a fixed order,
so every result here is asserted bit-identical; none differs by float reordering."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import run_op

from femto.backend.cpu import CPUBackend
from femto.ops import add, attention, cross_entropy, dropout, embedding, gelu, layernorm, matmul


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
    """name -> (fn, arrays, grad_args): shapes big enough that 2 threads split rows and columns."""
    ids = rng.integers(0, 5, (4, 33)).astype(np.int32)  # only 5 ids: rows repeat many times
    normal = rng.standard_normal
    return {
        "matmul": (matmul, [normal((67, 45)), normal((37, 45)), normal(37)], (0, 1, 2)),
        "matmul_no_bias": (matmul, [normal((67, 45)), normal((37, 45)), None], (0, 1)),
        # three rows: the forward's dot-product path, split over output blocks
        "matmul_few_rows": (
            matmul,
            [normal((3, 300)), normal((1000, 300)), normal(1000)],
            (0, 1, 2),
        ),
        "embedding": (embedding, [ids, normal((5, 67))], (1,)),
        "add": (add, [normal((3, 17, 29)), normal((17, 29))], (0, 1)),
        "add_bias": (add, [normal((51, 29)), normal(29)], (0, 1)),
        "layernorm": (layernorm, [normal((4, 17, 33)), normal(33), normal(33)], (0, 1, 2)),
        "gelu": (gelu, [normal((9, 127))], (0,)),
        "attention": (lambda t: attention(t, 3), [normal((3, 17, 3 * 12))], (0,)),
        "dropout": (lambda t: dropout(t, 0.3, 9), [normal((9, 127))], (0,)),
        "crossentropy": (cross_entropy, [normal((4, 17, 31)), ids[:, :17] % 31], (0,)),
    }


@pytest.mark.parametrize("name", list(_cases(np.random.default_rng(0))))
def test_op_is_bit_identical_at_1_and_2_threads(cpu, name):
    fn, arrays, grad_args = _cases(np.random.default_rng(0))[name]
    arrays = [None if a is None else np.asarray(a) for a in arrays]
    results = {}
    for n in (1, 2):
        cpu.set_num_threads(n)
        assert cpu.num_threads() == n
        y = run_op(cpu, fn, arrays)[0]
        dout = np.random.default_rng(1).standard_normal(y.shape)
        results[n] = run_op(cpu, fn, arrays, grad_args, dout)
    (out1, grads1), (out2, grads2) = results[1], results[2]
    assert out1.tobytes() == out2.tobytes(), f"{name} forward differs between 1 and 2 threads"
    for i in grad_args:
        assert grads1[i].tobytes() == grads2[i].tobytes(), f"{name} gradient of input {i} differs"


def test_optimizer_kernels_are_bit_identical_at_1_and_2_threads(cpu):
    rng = np.random.default_rng(2)
    param, grad = rng.standard_normal(10_001).astype(np.float32), rng.standard_normal(10_001)
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
    B, T, NH, HS, TMAX = 2, 9, 3, 5, 12
    qkv = np.random.default_rng(3).standard_normal((B, T, 3 * NH * HS)).astype(np.float32)
    results = {}
    for n in (1, 2):
        cpu.set_num_threads(n)
        out = cpu.empty(B * T * NH * HS)
        k, v = cpu.zeros(B * NH * TMAX * HS), cpu.zeros(B * NH * TMAX * HS)
        cpu.run(
            "attention_cached_forward",
            out,
            k,
            v,
            cpu.from_numpy(qkv),
            cpu.from_numpy(np.arange(T, dtype=np.int32)),
            B=B,
            T=T,
            C=NH * HS,
            NH=NH,
            TMAX=TMAX,
            first=0,
        )
        results[n] = out.tobytes()
    assert results[1] == results[2]
