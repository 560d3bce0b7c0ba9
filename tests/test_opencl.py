"""What is specific to the OpenCL backend: device choice and listing, its error messages, kernel build
failures, buffers, and every kernel in csrc/femto.h agreeing with the CPU backend call by call.

The op-level tests (tests/ops) already run on OpenCL through the `backend` fixture; here the kernels are
driven directly through run(), with sizes that cross tile, work-group and reduction boundaries.
Training and checkpoint parity across devices live at the end and need femto.train / femto.checkpoint.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from conftest import skip_unavailable

from femto.backend import get_backend
from femto.errors import BackendUnavailable, KernelBuildError

opencl = pytest.importorskip("femto.backend.opencl")


@pytest.fixture(scope="module")
def cl_backend():
    try:
        return get_backend("opencl")
    except BackendUnavailable as exc:
        skip_unavailable("opencl", exc)


@pytest.fixture(scope="module")
def cpu():
    return get_backend("cpu")


# ---- devices and errors ----


def test_list_devices_reports_memory_and_compute_units(cl_backend):
    devices = opencl.list_devices()
    assert devices, "a working backend implies at least one device"
    for d in devices:
        assert d["memory_bytes"] > 0 and d["compute_units"] >= 1 and d["max_work_group_size"] >= 1
        assert d["name"] and d["platform_name"] and d["version"].startswith("OpenCL")
    assert (devices[0]["platform"], devices[0]["device"]) == (0, 0)


def test_default_device_is_the_preferred_type(cl_backend):
    want = opencl.default_device(opencl.list_devices())
    assert cl_backend.device.name.strip() == want["name"]
    assert want["name"] in cl_backend.device_name


def _row(p, d, kind):
    return {"platform": p, "device": d, "type": kind, "name": f"{kind} {p}:{d}"}


@pytest.mark.parametrize(
    "kinds, want",
    [
        (["SIM", "CPU", "GPU"], 2),  # a GPU wherever it is listed
        (["SIM", "CPU"], 1),  # a real CPU driver (PoCL) before the Oclgrind simulator
        (["CPU", "SIM"], 0),
        (["OTHER", "CPU", "CPU"], 1),  # the first of the best type
        (["SIM", "ACCEL"], 1),
        (["SIM"], 0),  # a simulator alone is still a device
    ],
)
def test_default_device_prefers_gpu_then_cpu_driver_then_simulator(kinds, want):
    rows = [_row(p, 0, kind) for p, kind in enumerate(kinds)]
    assert opencl.default_device(rows) is rows[want]
    assert opencl.default_device([]) is None


class _FakeDevice:
    def __init__(self, platform_name, type_bits):
        self.platform = type("P", (), {"name": platform_name})()
        self.type = type_bits


def test_oclgrind_is_a_simulator_not_a_gpu():
    cl = pytest.importorskip("pyopencl")
    t = cl.device_type
    # Oclgrind reports every type bit (GPU | CPU | ACCELERATOR | DEFAULT); PoCL reports ALL | CPU
    assert opencl._device_type(cl, _FakeDevice("Oclgrind", t.ALL)) == "SIM"
    assert opencl._device_type(cl, _FakeDevice("Oclgrind", t.CPU)) == "SIM"
    pocl = _FakeDevice("Portable Computing Language", t.CPU | t.DEFAULT)
    assert opencl._device_type(cl, pocl) == "CPU"
    assert opencl._device_type(cl, _FakeDevice("NVIDIA CUDA", t.GPU)) == "GPU"


def test_exact_device_spec_picks_that_device(cl_backend):
    d = opencl.list_devices()[-1]
    backend = get_backend(f"opencl:{d['platform']}:{d['device']}")
    assert backend.device.name.strip() == d["name"] and backend.name == "opencl"


@pytest.mark.parametrize(
    "spec,words",
    [
        ("opencl:99:0", ["no OpenCL platform 99", "femto devices"]),
        ("opencl:0:99", ["no device 99 on OpenCL platform 0", "femto devices"]),
        ("opencl:zero:0", ["opencl:PLATFORM:DEVICE", "'zero:0'"]),
        ("opencl:0", ["opencl:PLATFORM:DEVICE"]),
    ],
)
def test_bad_device_specs_are_one_clear_error(cl_backend, spec, words):
    with pytest.raises(BackendUnavailable) as info:
        get_backend(spec)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_missing_pyopencl_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyopencl", None)  # makes `import pyopencl` raise ImportError
    with pytest.raises(BackendUnavailable, match="pip install pyopencl"):
        get_backend("opencl")
    with pytest.raises(BackendUnavailable, match="pip install pyopencl"):
        opencl.list_devices()


def test_no_platform_says_how_to_get_one(monkeypatch):
    cl = pytest.importorskip("pyopencl")
    monkeypatch.setattr(cl, "get_platforms", list)
    with pytest.raises(BackendUnavailable) as info:
        get_backend("opencl")
    assert "no OpenCL platform" in str(info.value)
    assert "pip install pocl-binary-distribution" in str(info.value)
    assert "OpenCL driver" in str(info.value)


def test_broken_kernel_file_reports_file_and_build_log(cl_backend, tmp_path):
    for path in cl_backend.kernels_dir.glob("*.cl"):
        shutil.copy(path, tmp_path)
    broken = tmp_path / "gelu.cl"
    broken.write_text(broken.read_text().replace("exp(", "no_such_function_xyz(", 1))
    backend = opencl.OpenCLBackend(device=_spec_of(cl_backend), kernels_dir=tmp_path)
    out, inp = backend.zeros(4), backend.zeros(4)
    with pytest.raises(KernelBuildError) as info:
        backend.run("gelu_forward", out, inp, N=4)
    message = str(info.value)
    assert str(broken) in message
    assert "no_such_function_xyz" in message  # the compiler's log, not just "build failed"
    backend.run("add_forward", out, inp, inp, N=4, M=4)  # other files still build


def test_missing_kernel_file_is_a_build_error(cl_backend, tmp_path):
    backend = opencl.OpenCLBackend(device=_spec_of(cl_backend), kernels_dir=tmp_path)
    with pytest.raises(KernelBuildError, match="matmul.cl"):
        backend.run("matmul_forward", backend.zeros(1), backend.zeros(1), backend.zeros(1), None,
                    N=1, C=1, OC=1)  # fmt: skip


def test_kernels_dir_is_found_in_the_checkout():
    found = opencl.find_kernels_dir()
    assert (found / "matmul.cl").exists()
    assert {p.stem for p in found.glob("*.cl")} >= {
        "matmul", "embedding", "add", "layernorm", "gelu", "attention", "dropout", "crossentropy",
        "adamw",
    }  # fmt: skip


def test_programs_are_built_once_per_context(cl_backend):
    cl_backend.build_all()
    built = dict(cl_backend._programs)
    assert len(built) == len(set(opencl.STEMS.values()))  # one program per .cl file
    assert (
        cl_backend._program("matmul") is built[next(k for k in built if k[0].endswith("matmul.cl"))]
    )
    cl_backend.run("gelu_forward", cl_backend.zeros(3), cl_backend.zeros(3), N=3)
    assert cl_backend._programs == built


def test_kernel_set_matches_the_cpu_backend(cl_backend, cpu):
    assert cl_backend.kernel_names() == cpu.kernel_names()
    assert set(opencl.STEMS.values()) == {p.stem for p in cl_backend.kernels_dir.glob("*.cl")}


def test_run_rejects_unknown_kernels_and_foreign_buffers(cl_backend):
    with pytest.raises(KeyError, match="no_such_forward"):
        cl_backend.run("no_such_forward", N=1)
    with pytest.raises(TypeError, match="buffer of this backend"):
        cl_backend.run("gelu_forward", np.zeros(1, np.float32), cl_backend.zeros(1), N=1)


# ---- buffers ----


def test_buffers_stay_on_the_device_and_round_trip(cl_backend):
    a = np.arange(10, dtype=np.float32)
    buf = cl_backend.from_numpy(a.reshape(2, 5))
    assert isinstance(buf, opencl.CLBuffer) and not isinstance(buf, np.ndarray)
    np.testing.assert_array_equal(cl_backend.to_numpy(buf), a)
    ids = cl_backend.from_numpy(np.array([3, -1, 7], np.int32))
    assert cl_backend.to_numpy(ids).dtype == np.int32
    copy = cl_backend.empty(10)
    cl_backend.copy_(copy, buf)
    cl_backend.zero_(buf)
    np.testing.assert_array_equal(cl_backend.to_numpy(copy), a)
    np.testing.assert_array_equal(cl_backend.to_numpy(buf), np.zeros(10, np.float32))
    assert cl_backend.to_numpy(cl_backend.zeros(0)).shape == (0,)
    with pytest.raises(TypeError):
        cl_backend.from_numpy(np.zeros(3))  # float64 is never reinterpreted
    with pytest.raises(TypeError, match="sizes and dtypes must match"):
        cl_backend.copy_(cl_backend.empty(3), buf)


# ---- every kernel against the CPU backend ----


def _cases(rng: np.random.Generator) -> list[tuple[str, list, dict, float]]:
    """(kernel, buffers as numpy or None, scalars, rtol). Output and gradient buffers start random,
    so a kernel that overwrites where it should accumulate (or the reverse) fails."""

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def attention_state(B, T, C, NH):
        qkv = r(B, T, 3 * C)
        out, att = np.zeros((B, T, C), np.float32), np.zeros((B, NH, T, T), np.float32)
        cpu = get_backend("cpu")
        cpu.run("attention_forward", out.reshape(-1), att.reshape(-1), qkv.reshape(-1),
                B=B, T=T, C=C, NH=NH)  # fmt: skip
        return qkv, att, out

    cases = []
    for N, C, OC in [(1, 1, 1), (7, 3, 17), (70, 45, 33), (129, 200, 65)]:
        cases.append(
            (
                "matmul_forward",
                [r(N, OC), r(N, C), r(OC, C), r(OC)],
                {"N": N, "C": C, "OC": OC},
                1e-4,
            )
        )
        cases.append(
            (
                "matmul_forward",
                [r(N, OC), r(N, C), r(OC, C), None],
                {"N": N, "C": C, "OC": OC},
                1e-4,
            )
        )
        grads = [r(N, C), r(OC, C), r(OC), r(N, OC), r(N, C), r(OC, C)]
        for accumulate in (1, 0):  # 0: dinp overwritten (a fresh gradient), 1: added into
            sizes = {"N": N, "C": C, "OC": OC, "accumulate_dinp": accumulate}
            cases.append(("matmul_backward", grads, sizes, 1e-3))
        cases.append(
            (
                "matmul_backward",
                [None, grads[1], None, *grads[3:]],
                {"N": N, "C": C, "OC": OC, "accumulate_dinp": 1},
                1e-3,
            )
        )
    for N, V, C in [(1, 1, 1), (50, 7, 13), (300, 65, 64)]:
        ids = rng.integers(0, V, N).astype(np.int32)  # many repeated ids
        cases.append(("embedding_forward", [r(N, C), ids, r(V, C)], {"N": N, "C": C}, 0.0))
        cases.append(
            ("embedding_backward", [r(V, C), r(N, C), ids], {"N": N, "V": V, "C": C}, 1e-5)
        )
    for N, M in [(1, 1), (35, 35), (35, 5), (4096, 64)]:
        cases.append(("add_forward", [r(N), r(N), r(M)], {"N": N, "M": M}, 0.0))
        cases.append(("add_backward", [r(N), r(M), r(N)], {"N": N, "M": M}, 1e-5))
        cases.append(("add_backward", [None, r(M), r(N)], {"N": N, "M": M}, 1e-5))
    for N, C in [(1, 1), (7, 3), (33, 777)]:
        x = r(N, C) * 3 + 1
        mean, rstd = x.mean(1), 1 / np.sqrt(x.var(1) + 1e-5)
        cases.append(
            ("layernorm_forward", [r(N, C), r(N), r(N), x, r(C), r(C)], {"N": N, "C": C}, 1e-4)
        )
        cases.append(
            ("layernorm_forward", [r(N, C), r(N), r(N), x, r(C), None], {"N": N, "C": C}, 1e-4)
        )
        bufs = [r(N, C), r(C), r(C), r(N, C), x, r(C), mean, rstd]
        cases.append(("layernorm_backward", bufs, {"N": N, "C": C}, 1e-3))
        cases.append(("layernorm_backward", [None, *bufs[1:]], {"N": N, "C": C}, 1e-3))
    for N in (1, 1000):
        cases.append(("gelu_forward", [r(N), r(N) * 3], {"N": N}, 1e-5))
        for accumulate in (1, 0):
            bufs = [r(N), r(N), r(N) * 3]
            cases.append(("gelu_backward", bufs, {"N": N, "accumulate": accumulate}, 1e-4))
        seeds = np.array([12345, 4000000000 - 2**32], np.int32)  # site 1: a seed past 2**31
        cases.append(("dropout_forward", [r(N), r(N), seeds], {"N": N, "p": 0.3, "site": 0}, 0.0))
        cases.append(("dropout_backward", [r(N), r(N), seeds], {"N": N, "p": 0.3, "site": 1}, 1e-6))
    for B, T, C, NH in [(1, 1, 4, 1), (2, 7, 12, 3), (1, 300, 16, 2)]:
        qkv, att, out = attention_state(B, T, C, NH)
        sizes = {"B": B, "T": T, "C": C, "NH": NH}
        cases.append(("attention_forward", [r(B, T, C), r(B, NH, T, T), qkv], sizes, 1e-4))
        for accumulate in (1, 0):  # 0: dqkv overwritten (a fresh gradient), 1: added into
            bufs = [r(B, T, 3 * C), r(B, T, C), qkv, att, out]
            cases.append(("attention_backward", bufs, {**sizes, "accumulate": accumulate}, 1e-3))
    for B, T, C, NH, pos, TMAX in [(1, 1, 4, 1, 0, 1), (2, 1, 12, 3, 9, 16), (2, 5, 12, 2, 3, 8)]:
        HS = C // NH
        cache = [r(B, NH, TMAX, HS), r(B, NH, TMAX, HS)]
        positions = np.arange(pos, pos + T, dtype=np.int32)
        for first in sorted({0, T - 1}):  # every query, or the last only
            sizes = {"B": B, "T": T, "C": C, "NH": NH, "TMAX": TMAX, "first": first}
            bufs = [r(B, T - first, C), *cache, r(B, T, 3 * C), positions]
            cases.append(("attention_cached_forward", bufs, sizes, 1e-4))
    for N, V in [(1, 1), (7, 65), (300, 1000)]:
        logits, targets = r(N, V) * 2, rng.integers(0, V, N).astype(np.int32)
        lse = np.log(np.exp(logits.astype(np.float64)).sum(1)).astype(np.float32)
        cases.append(
            ("crossentropy_forward", [r(1), r(N), logits, targets], {"N": N, "V": V}, 1e-4)
        )
        bufs = [r(N, V), np.array([1.7], np.float32), logits, targets, lse]
        cases.append(("crossentropy_backward", bufs, {"N": N, "V": V}, 1e-3))
    for N in (1, 5000):
        hyper = {
            "lr": 1e-2,
            "beta1": 0.9,
            "beta2": 0.95,
            "eps": 1e-8,
            "weight_decay": 0.1,
            "grad_clip": 1.0,
            "grad_divisor": 2.0,
        }
        bufs = [r(N), r(N) * 0.1, np.abs(r(N)) * 0.01, r(N), np.array([9.0], np.float32)]
        cases.append(("adamw_update", bufs, dict(N=N, **hyper, step=3), 1e-4))
        cases.append(("sum_squares", [r(1), r(N)], {"N": N}, 1e-5))
    cases.append(("sum_squares", [r(1), r(100003)], {"N": 100003}, 1e-5))
    return cases


def _case_ids() -> list[str]:
    return [f"{c[0]}-{i}" for i, c in enumerate(_cases(np.random.default_rng(0)))]


@pytest.mark.parametrize("index", range(len(_case_ids())), ids=_case_ids())
def test_kernel_matches_cpu_backend(cl_backend, cpu, index):
    name, arrays, scalars, rtol = _cases(np.random.default_rng(index))[index]
    flat = [None if a is None else np.ascontiguousarray(a).reshape(-1) for a in arrays]
    cpu_bufs = [None if a is None else cpu.from_numpy(a) for a in flat]
    cl_bufs = [None if a is None else cl_backend.from_numpy(a) for a in flat]
    cpu.run(name, *cpu_bufs, **scalars)
    cl_backend.run(name, *cl_bufs, **scalars)
    for position, (want, got) in enumerate(zip(cpu_bufs, cl_bufs)):
        if want is None:
            continue
        got = cl_backend.to_numpy(got)
        if rtol == 0.0:  # copies, adds and the dropout hash are exact
            np.testing.assert_array_equal(got, want, err_msg=f"{name} buffer {position}")
        else:
            np.testing.assert_allclose(
                got, want, rtol=rtol, atol=rtol, err_msg=f"{name} buffer {position}"
            )


def test_dropout_mask_is_the_cpu_mask(cl_backend, cpu):
    x = np.ones(10000, np.float32)
    out_cpu, out_cl = cpu.empty(10000), cl_backend.empty(10000)
    seeds = np.array([7], np.int32)
    cpu.run(
        "dropout_forward", out_cpu, cpu.from_numpy(x), cpu.from_numpy(seeds), N=10000, p=0.5, site=0
    )
    cl_backend.run(
        "dropout_forward", out_cl, cl_backend.from_numpy(x), cl_backend.from_numpy(seeds), N=10000,
        p=0.5, site=0,
    )  # fmt: skip
    kept = cl_backend.to_numpy(out_cl) != 0
    np.testing.assert_array_equal(kept, out_cpu != 0)
    assert 4500 < kept.sum() < 5500


# ---- end to end: training and checkpoints across devices ----

MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "dropout": 0.0}


def _train(run_dir, corpus, device: str, steps: int, tmp_path) -> list[float]:
    """Train (or resume) the run in run_dir up to `steps` on `device`; the losses of this call's steps."""
    from femto.train import prepare_run, train

    options = {"data": str(corpus), "device": device, "steps": steps, "batch_size": 4, "eval_every": 1000,
                   "eval_batches": 2, "save_every": 1000, "log_every": 1000, "sample_tokens": 0, "seed": 5,
                   "warmup": 5, "lr": 3e-3}  # fmt: skip
    run = prepare_run(run_dir, MODEL, options, cache_dir=tmp_path / "cache")
    losses: list[float] = []
    train(run, on_event=lambda e: losses.append(e["loss"]) if e["kind"] == "step" else None)
    return losses


@pytest.fixture
def corpus(tmp_path):
    pytest.importorskip("femto.train")
    text = opencl.find_kernels_dir().parent / "datasets" / "shakespeare" / "tinyshakespeare.txt"
    path = tmp_path / "corpus.txt"
    path.write_text(text.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    return path


def test_training_on_opencl_follows_the_cpu_loss(cl_backend, corpus, tmp_path):
    cpu_losses = _train(tmp_path / "cpu", corpus, "cpu", 50, tmp_path)
    cl_losses = _train(tmp_path / "cl", corpus, "opencl", 50, tmp_path)
    assert len(cpu_losses) == len(cl_losses) == 50
    gaps = np.abs(np.array(cpu_losses) - np.array(cl_losses))
    assert gaps.max() < 1e-3, (
        f"step {gaps.argmax() + 1}: cpu {cpu_losses[gaps.argmax()]}, opencl {cl_losses[gaps.argmax()]}"
    )
    assert cpu_losses[-1] < cpu_losses[0] - 0.5  # it learned, so the comparison means something


@pytest.mark.parametrize("first,second", [("cpu", "opencl"), ("opencl", "cpu")])
def test_checkpoint_resumes_and_samples_on_the_other_device(
    cl_backend, corpus, tmp_path, first, second
):
    from femto.sample import generate, load_run

    start = tmp_path / "start"
    _train(start, corpus, first, 10, tmp_path)
    same, other = tmp_path / "same", tmp_path / "other"
    shutil.copytree(start, same)
    shutil.copytree(start, other)
    expected = _train(same, corpus, first, 20, tmp_path)  # the run continued where it was written
    resumed = _train(other, corpus, second, 20, tmp_path)  # ... and on the other device
    assert len(expected) == len(resumed) == 10
    np.testing.assert_allclose(resumed, expected, atol=1e-3)

    from femto.graph import no_grad

    logits = []
    for device in (first, second):
        loaded = load_run(start, device=device)
        prompt = loaded.tokenizer.encode("ROMEO:\nWhat")
        with no_grad():
            full, _ = loaded.model(np.array([prompt], np.int32))
            cached = loaded.model.forward_cached(
                np.array([prompt], np.int32), loaded.model.new_cache(1)
            )
        logits.append((full.numpy(), cached.numpy()))
        text = loaded.tokenizer.decode(
            generate(loaded.model, prompt, 30, 0.8, 5, np.random.default_rng(0))
        )
        assert len(text) == 30  # a char model: one character per token
    np.testing.assert_allclose(logits[1][0], logits[0][0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits[1][1], logits[0][1], rtol=1e-4, atol=1e-4)


# ---- femto devices ----


def test_femto_devices_lists_every_device(cl_backend):
    from click.testing import CliRunner

    from femto.cli import main

    result = CliRunner().invoke(main, ["devices"])
    assert result.exit_code == 0, result.output
    for d in opencl.list_devices():
        assert f"opencl:{d['platform']}:{d['device']}" in result.output
        assert d["name"] in result.output
    assert result.output.count("*") == 1  # the device plain --device opencl picks
    listed = json.loads(CliRunner().invoke(main, ["devices", "--json"]).output)
    assert [(r["platform"], r["device"]) for r in listed] == [
        (d["platform"], d["device"]) for d in opencl.list_devices()
    ]
    assert sum(r["default"] for r in listed) == 1


def test_femto_devices_without_pyopencl_is_one_line(monkeypatch):
    from click.testing import CliRunner

    from femto.cli import main

    monkeypatch.setitem(sys.modules, "pyopencl", None)
    result = CliRunner().invoke(main, ["devices"])
    assert result.exit_code == 1
    assert "pip install pyopencl" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("replayed", [False, True])  # the graph, or femto train's TrainStep
def test_a_training_step_moves_only_the_ids_in_and_the_loss_out(cl_backend, monkeypatch, replayed):
    """Issue 5's device residency: parameters, activations, gradients and AdamW moments stay on the
    device; a step uploads its (B, T) ids and targets (and, with dropout, one seed per dropout site)
    and reads back the loss scalar, nothing else."""
    from femto.model import GPT, GPTConfig
    from femto.optim import AdamW
    from femto.train import TrainStep

    config = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.1)
    model = GPT(config, cl_backend, np.random.default_rng(0))
    optimizer = AdamW(model.params)
    rng = np.random.default_rng(1)
    micro_step = TrainStep(model)

    def step() -> None:
        x = rng.integers(0, 11, (3, 8)).astype(np.int32)
        if replayed:
            micro_step(x, np.roll(x, -1, axis=1), rng)
        else:
            _, loss = model(x, np.roll(x, -1, axis=1), rng)
            loss.backward()
            loss.item()
        optimizer.step(lr=1e-3)
        model.zero_grad()

    step()  # the first step uploads constants once (position ids, the backward seed)
    uploads, downloads = [], []
    to_numpy, from_numpy, upload_ = cl_backend.to_numpy, cl_backend.from_numpy, cl_backend.upload_
    monkeypatch.setattr(cl_backend, "to_numpy", lambda buf: downloads.append(1) or to_numpy(buf))
    monkeypatch.setattr(
        cl_backend, "from_numpy", lambda a: uploads.append((a.dtype, a.shape)) or from_numpy(a)
    )
    monkeypatch.setattr(
        cl_backend, "upload_", lambda b, a: uploads.append((a.dtype, a.shape)) or upload_(b, a)
    )
    step()
    sites = 1 + 2 * config.n_layer  # the embeddings' dropout, and each block's two
    int32 = np.dtype(np.int32)
    assert sorted(uploads) == sorted([(int32, (3, 8))] * 2 + [(int32, (sites,))])
    assert len(downloads) == 1  # the loss


# ---- profiling ----


def test_profiling_counts_launches_and_replays(cl_backend):
    backend = get_backend(f"opencl:{_spec_of(cl_backend)}", profile=True)
    x = backend.from_numpy(np.ones(100, np.float32))
    out = backend.empty(100)
    backend.start_profile()
    backend.run("gelu_forward", out, x, N=100)
    with backend.capture() as plan:
        backend.run("gelu_forward", out, x, N=100)
    backend.replay(plan)
    backend.replay(plan)
    totals = backend.stop_profile()
    assert set(totals) == {"gelu_forward"}
    launches, ms = totals["gelu_forward"]
    assert launches == 4 and ms >= 0.0
    assert backend.stop_profile() == {}  # nothing is kept after a stop
    with pytest.raises(RuntimeError, match="profile=True"):
        cl_backend.start_profile()


def _spec_of(backend) -> str:
    for d in opencl.list_devices():
        if d["name"] == backend.device.name.strip():
            return f"{d['platform']}:{d['device']}"
    raise AssertionError("the backend's device is not listed")


# ---- the matmul tuner ----

SMALL = {"small": (70, 45, 33)}  # one quick shape class


@pytest.fixture
def tune_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEMTO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / opencl.TUNE_CACHE_FILE


def test_tuner_rejects_a_candidate_that_fails_to_build(cl_backend, tune_cache):
    backend = get_backend(f"opencl:{_spec_of(cl_backend)}", tune=False)
    results = opencl.tune_matmul(backend, [(64, 16, 7), (32, 16, 4)], SMALL, repeats=1)
    assert results["small"]["params"] == [32, 16, 4]
    assert "failed" in results["small"]["rejected"]["64x16x7"]  # TILE not a multiple of WPT
    assert backend.matmul_params["small"] == (32, 16, 4)


def test_tuner_rejects_a_candidate_with_a_wrong_result(cl_backend, tune_cache, tmp_path):
    kernels = tmp_path / "kernels"
    shutil.copytree(cl_backend.kernels_dir, kernels)
    source = (kernels / "matmul.cl").read_text()
    wrong = "out[i * N + j] = base + acc[wi][wj] + (TK == 8 ? 1.0f : 0.0f);"
    (kernels / "matmul.cl").write_text(source.replace("out[i * N + j] = base + acc[wi][wj];", wrong))
    backend = opencl.OpenCLBackend(device=_spec_of(cl_backend), kernels_dir=kernels, tune=False)
    results = opencl.tune_matmul(backend, [(64, 8, 8), (32, 16, 4)], SMALL, repeats=1)
    assert results["small"]["params"] == [32, 16, 4]
    assert "wrong result" in results["small"]["rejected"]["64x8x8"]


def test_tuner_choice_is_cached_by_device_and_reused(cl_backend, tune_cache):
    spec = _spec_of(cl_backend)
    first = opencl.tune_matmul(get_backend(f"opencl:{spec}", tune=False), [(32, 8, 4)], SMALL, 1)
    assert first["small"]["cached"] is False and tune_cache.exists()
    stored = json.loads(tune_cache.read_text())
    assert list(stored) == [opencl.device_key(cl_backend.device)]
    backend = get_backend(f"opencl:{spec}", tune=False)
    assert backend.matmul_params == {"small": (32, 8, 4)}  # read back when a backend starts
    again = opencl.tune_matmul(backend, [(64, 16, 8)], SMALL, 1)
    assert again["small"]["cached"] is True and again["small"]["params"] == [32, 8, 4]
    forced = opencl.tune_matmul(backend, [(64, 16, 8)], SMALL, 1, force=True)
    assert forced["small"]["cached"] is False and forced["small"]["params"] == [64, 16, 8]
    tune_cache.write_text("{not json")  # a damaged cache means tuning afresh, never an error
    assert get_backend(f"opencl:{spec}", tune=False).matmul_params == {}


@pytest.mark.parametrize("params", [(32, 8, 4), (128, 16, 8), (16, 4, 2), (64, 32, 8)])
def test_every_tile_shape_matches_numpy(cl_backend, cpu, rng, params, tune_cache):
    backend = get_backend(f"opencl:{_spec_of(cl_backend)}", tune=False)
    backend.matmul_params = {"small": params, "large": params}
    for N, C, OC in ((1, 1, 1), (70, 45, 33), (300, 70, 130), (4099, 17, 9)):
        x, w = rng.standard_normal((N, C)), rng.standard_normal((OC, C))
        b, dout = rng.standard_normal(OC), rng.standard_normal((N, OC))
        results = []
        for be in (backend, cpu):
            up = lambda a: be.from_numpy(np.ascontiguousarray(a, np.float32).reshape(-1))  # noqa: E731
            out, dx = be.empty(N * OC), be.empty(N * C)
            dw, db = be.zeros(OC * C), be.zeros(OC)
            be.run("matmul_forward", out, up(x), up(w), up(b), N=N, C=C, OC=OC)
            be.run("matmul_backward", dx, dw, db, up(dout), up(x), up(w), N=N, C=C, OC=OC,
                   accumulate_dinp=0)  # fmt: skip
            results.append([be.to_numpy(t) for t in (out, dx, dw, db)])
        for name, got, want in zip(("out", "dinp", "dweight", "dbias"), *results):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{params} {name}")


def test_tuning_on_first_use_and_femto_devices_tune(cl_backend, tune_cache):
    from click.testing import CliRunner

    from femto.cli import main

    backend = get_backend(f"opencl:{_spec_of(cl_backend)}", tune=True)  # a GPU's default
    assert set(backend.matmul_params) == {"small", "large"} and tune_cache.exists()
    result = CliRunner().invoke(main, ["devices", "--tune", "--device", f"opencl:{_spec_of(cl_backend)}"])
    assert result.exit_code == 0, result.output
    assert "TILE x TK x WPT" in result.output and "cached" in result.output
    bad = CliRunner().invoke(main, ["devices", "--tune", "--device", "cpu"])
    assert bad.exit_code != 0 and "needs an OpenCL device" in bad.output
