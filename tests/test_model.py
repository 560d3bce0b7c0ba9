"""The GPT model: names and shapes, initialisation, untrained loss, agreement with a float64 numpy
forward and backward built from tests/reference.py, the cached forward, dropout, and overfitting.

Tolerances: float32 kernels against the float64 oracle on a 2-layer model agree to about 1e-6
absolute on logits; 1e-4 relative / 1e-5 absolute leaves room for summation order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref

from femto.backend import get_backend
from femto.errors import CheckpointError, ConfigError
from femto.graph import no_grad
from femto.model import GPT, GPTConfig
from femto.optim import AdamW

TINY = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=12)


def reference_forward(cfg: GPTConfig, w: dict[str, np.ndarray], idx, targets=None):
    """float64 nanoGPT forward (and backward, given targets): logits, loss, grads by name."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    T = idx.shape[1]
    get = w.get
    tape = []
    x = ref.embedding_forward(idx, w["transformer.wte.weight"]) + w["transformer.wpe.weight"][:T]
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."
        a = ref.layernorm_forward(x, w[h + "ln_1.weight"], get(h + "ln_1.bias"))
        qkv = ref.matmul_forward(a, w[h + "attn.c_attn.weight"], get(h + "attn.c_attn.bias"))
        att, _ = ref.attention_forward(qkv, cfg.n_head)
        y = ref.matmul_forward(att, w[h + "attn.c_proj.weight"], get(h + "attn.c_proj.bias"))
        x2 = x + y
        b = ref.layernorm_forward(x2, w[h + "ln_2.weight"], get(h + "ln_2.bias"))
        f = ref.matmul_forward(b, w[h + "mlp.c_fc.weight"], get(h + "mlp.c_fc.bias"))
        g = ref.gelu_forward(f)
        y2 = ref.matmul_forward(g, w[h + "mlp.c_proj.weight"], get(h + "mlp.c_proj.bias"))
        tape.append((x, a, qkv, att, x2, b, f, g))
        x = x2 + y2
    xf = ref.layernorm_forward(x, w["transformer.ln_f.weight"], get("transformer.ln_f.bias"))
    logits = ref.matmul_forward(xf, w["transformer.wte.weight"], None)
    if targets is None:
        return logits, None, None
    loss = ref.crossentropy_forward(logits, targets)

    grads = {k: np.zeros_like(v) for k, v in w.items()}

    def acc(name, g):
        if g is not None and name in grads:
            grads[name] += g

    dlogits = ref.crossentropy_backward(1.0, logits, targets)
    dxf, dwte, _ = ref.matmul_backward(dlogits, xf, w["transformer.wte.weight"], None)
    acc("transformer.wte.weight", dwte)
    dx, dw, db = ref.layernorm_backward(
        dxf, x, w["transformer.ln_f.weight"], get("transformer.ln_f.bias")
    )
    acc("transformer.ln_f.weight", dw)
    acc("transformer.ln_f.bias", db)
    for i in reversed(range(cfg.n_layer)):
        h = f"transformer.h.{i}."
        x_in, a, qkv, att, x2, b, f, g = tape[i]
        dg, dw, db = ref.matmul_backward(
            dx, g, w[h + "mlp.c_proj.weight"], get(h + "mlp.c_proj.bias")
        )
        acc(h + "mlp.c_proj.weight", dw)
        acc(h + "mlp.c_proj.bias", db)
        df = ref.gelu_backward(dg, f)
        dbn, dw, db = ref.matmul_backward(df, b, w[h + "mlp.c_fc.weight"], get(h + "mlp.c_fc.bias"))
        acc(h + "mlp.c_fc.weight", dw)
        acc(h + "mlp.c_fc.bias", db)
        dx2, dw, db = ref.layernorm_backward(dbn, x2, w[h + "ln_2.weight"], get(h + "ln_2.bias"))
        acc(h + "ln_2.weight", dw)
        acc(h + "ln_2.bias", db)
        dx2 = dx2 + dx
        datt, dw, db = ref.matmul_backward(
            dx2, att, w[h + "attn.c_proj.weight"], get(h + "attn.c_proj.bias")
        )
        acc(h + "attn.c_proj.weight", dw)
        acc(h + "attn.c_proj.bias", db)
        dqkv = ref.attention_backward(datt, qkv, cfg.n_head)
        da, dw, db = ref.matmul_backward(
            dqkv, a, w[h + "attn.c_attn.weight"], get(h + "attn.c_attn.bias")
        )
        acc(h + "attn.c_attn.weight", dw)
        acc(h + "attn.c_attn.bias", db)
        dxi, dw, db = ref.layernorm_backward(da, x_in, w[h + "ln_1.weight"], get(h + "ln_1.bias"))
        acc(h + "ln_1.weight", dw)
        acc(h + "ln_1.bias", db)
        dx = dx2 + dxi
    acc("transformer.wte.weight", ref.embedding_backward(dx, idx, cfg.vocab_size))
    grads["transformer.wpe.weight"][:T] += dx.sum(axis=0)
    return logits, loss, grads


def randomised(model: GPT, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Give every parameter (LayerNorms and biases too) random values, so nothing is trivially 0/1."""
    weights = {
        name: (rng.standard_normal(a.shape) * 0.3 + (1.0 if ".ln_" in name else 0.0)).astype(
            np.float32
        )
        for name, a in model.to_numpy().items()
    }
    model.load_numpy(weights)
    return weights


def test_parameter_names_and_shapes_follow_nanogpt():
    shapes = GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=128).param_shapes()
    assert shapes["transformer.wte.weight"] == (65, 128)
    assert shapes["transformer.wpe.weight"] == (64, 128)
    assert shapes["transformer.h.1.attn.c_attn.weight"] == (384, 128)  # nn.Linear: (out, in)
    assert shapes["transformer.h.0.attn.c_attn.bias"] == (384,)
    assert shapes["transformer.h.0.mlp.c_fc.weight"] == (512, 128)
    assert shapes["transformer.h.0.mlp.c_proj.weight"] == (128, 512)
    assert shapes["transformer.ln_f.bias"] == (128,)
    assert "lm_head.weight" not in shapes  # tied to wte
    assert len(shapes) == 2 + 2 * 12 + 2
    no_bias = GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=128, bias=False)
    assert not any(n.endswith(".bias") for n in no_bias.param_shapes())


def test_gpt2_initialisation_statistics(cpu_backend):
    cfg = GPTConfig(vocab_size=300, block_size=64, n_layer=3, n_head=4, n_embd=96)
    w = GPT(cfg, cpu_backend, np.random.default_rng(0)).to_numpy()
    assert np.std(w["transformer.wte.weight"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(w["transformer.h.0.mlp.c_fc.weight"]) == pytest.approx(0.02, rel=0.05)
    residual = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert np.std(w["transformer.h.2.attn.c_proj.weight"]) == pytest.approx(residual, rel=0.05)
    assert np.std(w["transformer.h.2.mlp.c_proj.weight"]) == pytest.approx(residual, rel=0.05)
    assert np.all(w["transformer.h.1.ln_2.weight"] == 1) and np.all(w["transformer.ln_f.bias"] == 0)
    assert np.all(w["transformer.h.0.attn.c_attn.bias"] == 0)


def test_untrained_loss_is_log_vocab(cpu_backend):
    cfg = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=64)
    model = GPT(cfg, cpu_backend, np.random.default_rng(1))
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 65, (8, 32)), rng.integers(0, 65, (8, 32))
    with no_grad():
        _, loss = model(x, y)
    # near-uniform logits (std 0.02 * sqrt(C)), plus a small boost for each input token's own logit
    # through the tied head: nanoGPT's Shakespeare model also starts at about 4.2 > ln 65 = 4.17
    assert loss.item() == pytest.approx(math.log(65), abs=0.1)


@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_match_float64_reference(backend, bias):
    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=12, bias=bias)
    rng = np.random.default_rng(3)
    model = GPT(cfg, backend, rng)
    weights = randomised(model, rng)
    idx, targets = rng.integers(0, 13, (3, 7)), rng.integers(0, 13, (3, 7))  # T=7 < block_size
    logits, loss = model(idx, targets)
    loss.backward()
    ref_logits, ref_loss, ref_grads = reference_forward(cfg, weights, idx, targets)
    np.testing.assert_allclose(logits.numpy(), ref_logits, rtol=1e-4, atol=1e-5)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    for name, p in model.params.items():
        np.testing.assert_allclose(
            p.grad.numpy(), ref_grads[name], rtol=1e-3, atol=2e-6, err_msg=name
        )


def test_cached_forward_matches_full_forward(backend):
    rng = np.random.default_rng(4)
    model = GPT(TINY, backend, rng)
    randomised(model, rng)
    idx = rng.integers(0, 13, (2, 8))
    with no_grad():
        full, _ = model(idx)
        cache = model.new_cache(2)
        first = model.forward_cached(idx[:, :5], cache)  # a prompt of 5, then one token at a time
        steps = [model.forward_cached(idx[:, t : t + 1], cache) for t in range(5, 8)]
    cached = np.concatenate([first.numpy(), *(s.numpy() for s in steps)], axis=1)
    np.testing.assert_allclose(cached, full.numpy(), rtol=1e-4, atol=1e-5)
    assert cache.length == 8
    with no_grad(), pytest.raises(ConfigError, match="exceeds block_size 8"):
        model.forward_cached(idx[:, :1], cache)


def test_cached_forward_last_only_gives_the_last_logits(backend):
    # what generation asks for once the window is full: every key and value, the last logits only
    rng = np.random.default_rng(5)
    model = GPT(TINY, backend, rng)
    randomised(model, rng)
    idx = rng.integers(0, 13, (2, 7))
    with no_grad():
        full, _ = model(idx)
        cache = model.new_cache(2)
        last = model.forward_cached(idx, cache, last_only=True)
        following = model.forward_cached(idx[:, :1], cache)  # the cache still holds all 7 positions
        cache_full = model.new_cache(2)
        model.forward_cached(idx, cache_full)
        following_full = model.forward_cached(idx[:, :1], cache_full)
    assert last.shape == (2, 1, TINY.vocab_size)
    np.testing.assert_allclose(last.numpy()[:, 0], full.numpy()[:, -1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(following.numpy(), following_full.numpy(), rtol=1e-5, atol=1e-6)


def test_cached_forward_refuses_autograd(cpu_backend):
    model = GPT(TINY, cpu_backend)
    with pytest.raises(RuntimeError, match="no_grad"):
        model.forward_cached(np.zeros((1, 1), np.int32), model.new_cache(1))


def test_dropout_is_seeded_and_off_without_rng(cpu_backend):
    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=12, dropout=0.3)
    model = GPT(cfg, cpu_backend, np.random.default_rng(0))
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 13, (2, 8)), rng.integers(0, 13, (2, 8))
    with no_grad():
        a = model(x, y, np.random.default_rng(7))[1].item()
        b = model(x, y, np.random.default_rng(7))[1].item()
        c = model(x, y, np.random.default_rng(8))[1].item()
        eval1, eval2 = model(x, y)[1].item(), model(x, y)[1].item()
    assert a == b and a != c
    assert eval1 == eval2 and eval1 != a


def test_overfits_one_batch(cpu_backend):
    cfg = GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg, cpu_backend, np.random.default_rng(0))
    optimizer = AdamW(model.params, lr=3e-3, weight_decay=0.0)
    rng = np.random.default_rng(6)
    x, y = rng.integers(0, 11, (4, 16)), rng.integers(0, 11, (4, 16))
    for _ in range(150):
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        model.zero_grad()
    with no_grad():
        final = model(x, y)[1].item()
    assert final < 0.05, f"loss {final:.4f} after 150 steps on one batch"


def test_config_errors_name_the_value():
    with pytest.raises(ConfigError, match="n_embd 10 must be divisible by n_head 4"):
        GPTConfig(n_embd=10, n_head=4)
    for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        with pytest.raises(ConfigError, match=f"{field} must be a positive integer, got 0"):
            GPTConfig(**{field: 0})
    with pytest.raises(ConfigError, match="dropout"):
        GPTConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="unknown keys"):
        GPTConfig.from_dict({**TINY.to_dict(), "n_embed": 3})


def test_load_numpy_checks_names_and_shapes(cpu_backend):
    model = GPT(TINY, cpu_backend)
    weights = model.to_numpy()
    wrong = dict(weights, **{"transformer.h.0.mlp.c_fc.weight": np.zeros((48, 11), np.float32)})
    with pytest.raises(CheckpointError, match=r"transformer\.h\.0\.mlp\.c_fc\.weight.*\[48, 11\]"):
        model.load_numpy(wrong)
    missing = {k: v for k, v in weights.items() if k != "transformer.ln_f.bias"}
    with pytest.raises(CheckpointError, match="missing tensors"):
        model.load_numpy(missing)
    model.load_numpy(dict(weights, **{"lm_head.weight": weights["transformer.wte.weight"]}))


def test_model_uses_the_backend_it_was_given():
    cpu = get_backend("cpu")
    model = GPT(TINY, cpu)
    assert all(p.backend is cpu for p in model.params.values())
